//! The subject index of one shard: every pattern with subscribers, as a token trie, so that
//! finding the patterns an event's topic matches costs what the matches cost, not what the
//! patterns that exist cost (the shape of nats-server's sublist).
//!
//! Each level of the trie is keyed by one `.`-separated token: a map of literal tokens, one
//! child for `*`, and, since `>` can only end a pattern, a member list for "this path followed
//! by `>`" on the node itself. A pattern's subscribers hang at the node its last token leads to
//! (or on the `>` list of the node before its `>`).
//!
//! Matching a topic walks it token by token: at each node, the `>` list matches (there is at
//! least one token left), then the literal child of the next token (one hash lookup, however
//! many siblings it has) and the `*` child are followed. A pattern that does not match costs
//! nothing unless its tokens up to where it fails match the topic's, and then it shares that
//! path with every other pattern of the same prefix. The walk keeps its pending `*` branches on
//! a fixed stack on the call stack: no heap allocation per event (a spill vector is used only
//! past [`INLINE_BRANCHES`] pending branches, which takes patterns with that many `*` sharing a
//! prefix that matches the topic).
//!
//! Empty nodes are pruned when their last pattern goes, so the trie holds only what open
//! streams hold.

use std::collections::HashMap;

use super::members::{Member, Members};

/// Pending `*` branches the walk keeps on the call stack before it spills to the heap.
const INLINE_BRANCHES: usize = 32;

/// One shard's patterns and their subscribers.
#[derive(Debug, Default)]
pub(super) struct PatternIndex {
    root: Node,
    /// Patterns with at least one subscriber.
    distinct: usize,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by literal token.
    literal: HashMap<Box<str>, Node>,
    /// The child for a `*` token.
    star: Option<Box<Node>>,
    /// Subscribers of the pattern that ends at this node.
    end: Members,
    /// Subscribers of this node's path followed by `>`.
    tail: Members,
}

impl Node {
    /// Children, counted (for pruning: a node whose only child is the next one on a path).
    fn children(&self) -> usize {
        self.literal.len() + usize::from(self.star.is_some())
    }

    fn child(&self, step: Step<'_>) -> Option<&Node> {
        match step {
            Step::Star => self.star.as_deref(),
            Step::Literal(t) => self.literal.get(t),
            Step::Tail => None,
        }
    }

    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Node> {
        match step {
            Step::Star => self.star.as_deref_mut(),
            Step::Literal(t) => self.literal.get_mut(t),
            Step::Tail => None,
        }
    }

    /// Drops the child at `step` and gives the literal map's room back once it is mostly
    /// empty (amortized O(1)).
    fn prune(&mut self, step: Step<'_>) {
        match step {
            Step::Star => self.star = None,
            Step::Literal(t) => {
                self.literal.remove(t);
                if self.literal.capacity() > 64 && self.literal.len() < self.literal.capacity() / 4 {
                    self.literal.shrink_to_fit();
                }
            }
            Step::Tail => {}
        }
    }
}

/// One token of a pattern, as the trie sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Literal(&'a str),
    Star,
    /// `>`: always the last token.
    Tail,
}

/// The tokens of a pattern as steps.
fn steps(pattern: &str) -> impl Iterator<Item = Step<'_>> + Clone {
    pattern.split('.').map(|t| match t {
        "*" => Step::Star,
        ">" => Step::Tail,
        t => Step::Literal(t),
    })
}

/// The first token of `rest` and what follows it (`None`: it was the last token).
fn split(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('.') {
        Some((token, more)) => (token, Some(more)),
        None => (rest, None),
    }
}

impl PatternIndex {
    /// Whether no pattern has a subscriber in this shard (the fan-out skips the walk).
    pub fn is_empty(&self) -> bool {
        self.distinct == 0
    }

    /// Patterns with at least one subscriber.
    pub fn distinct(&self) -> usize {
        self.distinct
    }

    /// Lists `member` under `pattern` (a valid pattern: `>` only last, no empty token) and
    /// returns its position there, or [`super::members::NOT_LISTED`] for a repeated filter.
    pub fn add(&mut self, pattern: &str, member: Member) -> usize {
        let mut node = &mut self.root;
        let mut tail = false;
        for step in steps(pattern) {
            node = match step {
                Step::Star => node.star.get_or_insert_with(Box::default),
                Step::Literal(t) => node.literal.entry(Box::from(t)).or_default(),
                Step::Tail => {
                    tail = true;
                    break;
                }
            };
        }
        let list = if tail { &mut node.tail } else { &mut node.end };
        let was_empty = list.is_empty();
        let pos = list.add(member);
        if was_empty {
            self.distinct += 1;
        }
        pos
    }

    /// Removes the entry at `pos` of `pattern`'s list; returns the entry moved into `pos`
    /// (its subscriber's remembered position must be updated). When the pattern has no
    /// subscriber left, the nodes only it used are pruned.
    pub fn remove(&mut self, pattern: &str, pos: usize) -> Option<Member> {
        let list = self.list_mut(pattern);
        debug_assert!(list.is_some(), "removing from a pattern that is not indexed: {pattern}");
        let list = list?;
        let moved = list.remove(pos);
        if list.is_empty() {
            self.distinct -= 1;
            self.prune(pattern);
        }
        moved
    }

    fn list_mut(&mut self, pattern: &str) -> Option<&mut Members> {
        let mut node = &mut self.root;
        for step in steps(pattern) {
            if step == Step::Tail {
                return Some(&mut node.tail);
            }
            node = node.child_mut(step)?;
        }
        Some(&mut node.end)
    }

    /// Drops the nodes along `pattern`'s path that nothing else uses any more: the deepest
    /// suffix of the path whose nodes hold no list and no other child.
    fn prune(&mut self, pattern: &str) {
        // The nodes along the path (root excluded), found read-only first; the cut is made
        // under the last node that something else still uses.
        let path: Vec<Step<'_>> = steps(pattern).take_while(|s| *s != Step::Tail).collect();
        let mut cut = 0; // index in `path` of the first removable node
        let mut node = &self.root;
        for (i, step) in path.iter().enumerate() {
            let Some(child) = node.child(*step) else { return };
            let last = i + 1 == path.len();
            let used_otherwise =
                !child.end.is_empty() || !child.tail.is_empty() || child.children() > usize::from(!last);
            if used_otherwise {
                cut = i + 1;
            }
            node = child;
        }
        if cut == path.len() {
            return;
        }
        let mut parent = &mut self.root;
        for step in &path[..cut] {
            match parent.child_mut(*step) {
                Some(c) => parent = c,
                None => return,
            }
        }
        parent.prune(path[cut]);
        if self.distinct == 0 {
            self.root.literal.shrink_to_fit();
        }
    }

    /// Calls `f` with the list of every pattern that matches `topic`; each list once.
    /// Allocation-free unless more than [`INLINE_BRANCHES`] `*` branches are pending at once.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a Members)) {
        let mut stack = Branches::default();
        stack.push((&self.root, Some(topic)));
        while let Some((mut node, mut rest)) = stack.pop() {
            // Follow the literal path in this loop; `*` branches wait on the stack.
            loop {
                let Some(remaining) = rest else {
                    if !node.end.is_empty() {
                        f(&node.end);
                    }
                    break;
                };
                if !node.tail.is_empty() {
                    f(&node.tail);
                }
                let (token, more) = split(remaining);
                if let Some(star) = node.star.as_deref() {
                    stack.push((star, more));
                }
                match node.literal.get(token) {
                    Some(child) => {
                        node = child;
                        rest = more;
                    }
                    None => break,
                }
            }
        }
    }

    /// Nodes in the trie, root included (tests: pruning leaves nothing behind).
    #[cfg(test)]
    fn nodes(&self) -> usize {
        fn count(n: &Node) -> usize {
            1 + n.literal.values().map(count).sum::<usize>() + n.star.as_deref().map_or(0, count)
        }
        count(&self.root)
    }
}

/// A node to visit and the part of the topic left to match there.
type Branch<'n, 't> = (&'n Node, Option<&'t str>);

/// The walk's pending branches: a fixed array on the call stack, then a vector.
struct Branches<'n, 't> {
    inline: [Option<Branch<'n, 't>>; INLINE_BRANCHES],
    len: usize,
    spill: Vec<Branch<'n, 't>>,
}

impl Default for Branches<'_, '_> {
    fn default() -> Self {
        Branches { inline: [None; INLINE_BRANCHES], len: 0, spill: Vec::new() }
    }
}

impl<'n, 't> Branches<'n, 't> {
    fn push(&mut self, b: Branch<'n, 't>) {
        if self.len < INLINE_BRANCHES {
            self.inline[self.len] = Some(b);
            self.len += 1;
        } else {
            self.spill.push(b);
        }
    }

    fn pop(&mut self) -> Option<Branch<'n, 't>> {
        if let Some(b) = self.spill.pop() {
            return Some(b);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.inline[self.len].take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Pattern;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Keys of the members matched for `topic`, sorted.
    fn matched(ix: &PatternIndex, topic: &str) -> Vec<usize> {
        let mut out = Vec::new();
        ix.for_each_match(topic, |m| out.extend(m.keys()));
        out.sort();
        out
    }

    #[test]
    fn star_tail_and_literal() {
        let mut ix = PatternIndex::default();
        for (key, p) in ["orders.*", "orders.>", "*.created", ">", "orders.1.x", "a.*.c"].iter().enumerate() {
            ix.add(p, Member { key, filter: 0 });
        }
        assert_eq!(matched(&ix, "orders.1"), vec![0, 1, 3]);
        assert_eq!(matched(&ix, "orders.created"), vec![0, 1, 2, 3]);
        assert_eq!(matched(&ix, "orders.1.x"), vec![1, 3, 4]);
        assert_eq!(matched(&ix, "orders"), vec![3], "`>` alone matches one token");
        assert_eq!(matched(&ix, "a.b.c"), vec![3, 5]);
        assert_eq!(matched(&ix, "a..c"), vec![3, 5], "`*` matches an empty token, as Pattern::matches does");
        assert_eq!(ix.distinct(), 6);
    }

    /// The trie agrees with `Pattern::matches` on random patterns and topics, and removing
    /// every pattern leaves only the root.
    #[test]
    fn agrees_with_the_pattern_matcher() {
        let mut rng = StdRng::seed_from_u64(14);
        let token = |rng: &mut StdRng| ["a", "b", "c", ""][rng.random_range(0..4)];
        let mut ix = PatternIndex::default();
        let mut patterns = Vec::new();
        for key in 0..400 {
            let n = rng.random_range(1..5);
            let mut toks: Vec<&str> = (0..n)
                .map(|_| match rng.random_range(0..5) {
                    0 => "*",
                    _ => ["a", "b", "c"][rng.random_range(0..3)],
                })
                .collect();
            if rng.random_bool(0.3) {
                toks.push(">");
            }
            let text = toks.join(".");
            let p = Pattern::parse(&text, 256).expect("valid pattern");
            let pos = ix.add(&text, Member { key, filter: 0 });
            patterns.push((p, pos));
        }
        for _ in 0..2000 {
            let n = rng.random_range(1..6);
            let topic = (0..n).map(|_| token(&mut rng)).collect::<Vec<_>>().join(".");
            let want: Vec<usize> =
                patterns.iter().enumerate().filter(|(_, (p, _))| p.matches(&topic)).map(|(k, _)| k).collect();
            assert_eq!(matched(&ix, &topic), want, "topic {topic:?}");
        }
        // Remove in reverse order of addition: a pattern's list then always ends with the key
        // being removed, so the positions recorded at `add` stay valid without updates.
        for (p, pos) in patterns.iter().rev() {
            ix.remove(p.as_str(), *pos);
        }
        assert_eq!(ix.distinct(), 0);
        assert_eq!(ix.nodes(), 1, "pruned back to the root");
    }

    #[test]
    fn prune_keeps_what_others_use() {
        let mut ix = PatternIndex::default();
        let a = ix.add("a.b.c", Member { key: 1, filter: 0 });
        let b = ix.add("a.b", Member { key: 2, filter: 0 });
        let c = ix.add("a.b.>", Member { key: 3, filter: 0 });
        ix.remove("a.b.c", a);
        assert_eq!(matched(&ix, "a.b"), vec![2]);
        assert_eq!(matched(&ix, "a.b.z"), vec![3]);
        assert_eq!(ix.nodes(), 3, "root, a, b");
        ix.remove("a.b", b);
        ix.remove("a.b.>", c);
        assert_eq!(ix.nodes(), 1);
    }

    #[test]
    fn many_pending_branches_spill_and_still_match() {
        let mut ix = PatternIndex::default();
        // A literal chain `t.t.t…` with a `*` child at each of its 40 levels: walking
        // `t.t.…` (40 tokens) leaves 40 `*` branches pending at once.
        let deep: Vec<&str> = vec!["*"; 40];
        ix.add(&deep.join("."), Member { key: 1, filter: 0 });
        for i in 0..40 {
            let mut p = vec!["t"; i];
            p.push("*");
            p.push("never");
            ix.add(&p.join("."), Member { key: 2 + i, filter: 0 });
        }
        let topic = vec!["t"; 40].join(".");
        assert_eq!(matched(&ix, &topic), vec![1]);
    }
}
