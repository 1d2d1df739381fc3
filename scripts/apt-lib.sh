# Shared by the scripts that install what a fresh Debian machine lacks (sourced, not run).

# apt_install PKG...: installs the named Debian packages (with sudo unless root); nothing when
# called with no package, so callers pass the list of what they found missing.
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "== installing: $*"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
