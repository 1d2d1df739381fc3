{{/* Names and labels. */}}
{{- define "sse-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sse-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The admin Service's name: <fullname>-admin, within 63 characters. */}}
{{- define "sse-bridge.adminServiceName" -}}
{{- printf "%s-admin" (include "sse-bridge.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* Whether the PodDisruptionBudget renders: podDisruptionBudget.enabled, or when it is null,
whenever the release runs more than one pod. Prints "true" or nothing. */}}
{{- define "sse-bridge.pdbEnabled" -}}
{{- $e := .Values.podDisruptionBudget.enabled }}
{{- if kindIs "bool" $e }}
{{- if $e }}true{{ end }}
{{- else if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* resources, with requests.memory defaulting to limits.memory (no eviction under node memory
pressure of a pod that stays within its request). */}}
{{- define "sse-bridge.resources" -}}
{{- $r := deepCopy .Values.resources }}
{{- $req := default dict $r.requests }}
{{- if not $req.memory }}
{{- $_ := set $req "memory" $r.limits.memory }}
{{- end }}
{{- $_ := set $r "requests" $req }}
{{- toYaml $r }}
{{- end }}

{{- define "sse-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sse-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sse-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sse-bridge.labels" -}}
helm.sh/chart: {{ include "sse-bridge.chart" . }}
{{ include "sse-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: sse-bridge
{{- end }}

{{- define "sse-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sse-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sse-bridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity ("512Mi", "1Gi", "1.5G", "536870912") in bytes, as an integer.
values.schema.json admits only the forms handled here.
*/}}
{{- define "sse-bridge.quantityBytes" -}}
{{- $q := . -}}
{{- if not (kindIs "string" $q) }}
{{- $q = printf "%d" (int64 $q) }}
{{- end }}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- if not $num }}
{{- fail (printf "resources.limits.memory: %q is not a memory quantity (e.g. 512Mi, 1Gi)" $q) }}
{{- end }}
{{- $suffix := trimPrefix $num $q -}}
{{- $mult := 1.0 -}}
{{- if $suffix }}
{{- if not (hasKey $units $suffix) }}
{{- fail (printf "resources.limits.memory: unit %q of %q is not one of Ki, Mi, Gi, Ti, k, M, G, T" $suffix $q) }}
{{- end }}
{{- $mult = get $units $suffix }}
{{- end }}
{{- mulf (float64 $num) $mult | floor | int64 }}
{{- end }}

{{/* memory.limit: config.memory.limit if set, else memoryBudgetPercent of the memory limit. */}}
{{- define "sse-bridge.memoryBudget" -}}
{{- $explicit := 0 }}
{{- with .Values.config.memory }}{{ $explicit = int64 (default 0 .limit) }}{{ end }}
{{- if gt $explicit 0 }}
{{- $explicit }}
{{- else }}
{{- $limit := include "sse-bridge.quantityBytes" .Values.resources.limits.memory | float64 }}
{{- divf (mulf $limit (float64 .Values.memoryBudgetPercent)) 100.0 | floor | int64 }}
{{- end }}
{{- end }}

{{/* A duration of the simple form values.schema.json admits for drain_timeout, in seconds. */}}
{{- define "sse-bridge.durationSeconds" -}}
{{- $d := toString . }}
{{- $num := regexFind "^[0-9]+" $d | float64 }}
{{- $unit := regexFind "[a-z]+$" $d }}
{{- $mult := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit }}
{{- if not $mult }}
{{- fail (printf "config.server.drain_timeout: %q: write it as <integer><ms|s|m|h>, e.g. 10s" $d) }}
{{- end }}
{{- mulf $num $mult | ceil | int64 }}
{{- end }}

{{/*
Any duration bridge.toml accepts ("15s", "1h 30m", "500ms", "2min") in seconds, as a float;
`what` names the key in the error. Units as humantime parses them.
*/}}
{{- define "sse-bridge.anyDurationSeconds" -}}
{{- $d := toString (index . 0) }}
{{- $what := index . 1 }}
{{- $units := dict "ns" 0.000000001 "nsec" 0.000000001 "us" 0.000001 "usec" 0.000001 "µs" 0.000001 "ms" 0.001 "msec" 0.001 "s" 1.0 "sec" 1.0 "second" 1.0 "seconds" 1.0 "m" 60.0 "min" 60.0 "minute" 60.0 "minutes" 60.0 "h" 3600.0 "hr" 3600.0 "hour" 3600.0 "hours" 3600.0 "d" 86400.0 "day" 86400.0 "days" 86400.0 "w" 604800.0 "week" 604800.0 "weeks" 604800.0 }}
{{- $total := 0.0 }}
{{- $parts := regexFindAll "[0-9]+\\s*[a-zA-Zµ]+" $d -1 }}
{{- if not $parts }}
{{- fail (printf "%s: %q is not a duration (e.g. 15s)" $what $d) }}
{{- end }}
{{- range $parts }}
{{- $n := regexFind "^[0-9]+" . }}
{{- $u := trim (trimPrefix $n .) }}
{{- if not (hasKey $units $u) }}
{{- fail (printf "%s: unit %q of %q is not one the chart can check (ms, s, m, h, d)" $what $u $d) }}
{{- end }}
{{- $total = addf $total (mulf (float64 $n) (get $units $u)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
Refuses values that the schema cannot express: they would install, then fail or lose streams.
*/}}
{{- define "sse-bridge.validate" -}}
{{- $drain := "10s" }}
{{- with .Values.config.server }}{{ with .drain_timeout }}{{ $drain = . }}{{ end }}{{ end }}
{{- $drainS := include "sse-bridge.durationSeconds" $drain | int64 }}
{{- $pre := int64 .Values.preStopSleepSeconds }}
{{- $grace := int64 .Values.terminationGracePeriodSeconds }}
{{- if le $grace (add $pre $drainS) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds (%d) + config.server.drain_timeout (%s = %ds), or the kubelet kills streams mid-drain" $grace $pre $drain $drainS) }}
{{- end }}
{{- $budget := include "sse-bridge.memoryBudget" . | int64 }}
{{- $limit := include "sse-bridge.quantityBytes" .Values.resources.limits.memory | int64 }}
{{- if gt $budget $limit }}
{{- fail (printf "config.memory.limit (%d bytes) is above resources.limits.memory (%d bytes): the pod would be OOM-killed before the bridge sheds" $budget $limit) }}
{{- end }}
{{- if lt $budget 16777216 }}
{{- fail (printf "the memory budget (%d bytes, from resources.limits.memory × memoryBudgetPercent or config.memory.limit) is below 16 MiB: raise resources.limits.memory" $budget) }}
{{- end }}
{{- with .Values.config.nats }}
{{- if not .subjects }}
{{- fail "config.nats is set but config.nats.subjects is empty: name at least one subject (e.g. \"events.>\")" }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.natsUrl.existingSecret (not .Values.config.nats) }}
{{- fail "secrets.natsUrl is set but config.nats is empty: set config.nats.subjects to turn the NATS source on" }}
{{- end }}
{{- with .Values.config.redis }}
{{- if not (or .channels .patterns) }}
{{- fail "config.redis is set but has neither channels nor patterns: name at least one" }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.redisUrl.existingSecret (not .Values.config.redis) }}
{{- fail "secrets.redisUrl is set but config.redis is empty: set config.redis.channels or patterns to turn the Redis source on" }}
{{- end }}
{{- $auth := default dict .Values.config.auth }}
{{- if .Values.secrets.authKeys.existingSecret }}
{{- if or $auth.public_key_file $auth.jwks_file }}
{{- fail "secrets.authKeys is set, and so is config.auth.public_key_file or jwks_file: use one (the chart points the bridge at the mounted Secret)" }}
{{- end }}
{{- if .Values.secrets.authSecret.existingSecret }}
{{- fail "secrets.authSecret (HS256) and secrets.authKeys (RS256/ES256) are both set: use one" }}
{{- end }}
{{- if not (has $auth.algorithm (list "RS256" "ES256")) }}
{{- fail "secrets.authKeys holds a public key: set config.auth.algorithm to RS256 or ES256" }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.authSecret.existingSecret (has $auth.algorithm (list "RS256" "ES256")) }}
{{- fail "secrets.authSecret is an HS256 secret, but config.auth.algorithm is not HS256" }}
{{- end }}
{{- if and (include "sse-bridge.pdbEnabled" .) (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetCPUUtilizationPercentage (not (and .Values.resources.requests .Values.resources.requests.cpu)) }}
{{- fail "autoscaling.targetCPUUtilizationPercentage is a percentage of resources.requests.cpu, which is not set: set a CPU request, or set the target to 0 and scale on memory or autoscaling.metrics" }}
{{- end }}
{{- with .Values.secrets.jetstreamUrl }}{{ if and .existingSecret (not $.Values.config.jetstream) }}
{{- fail "secrets.jetstreamUrl is set but config.jetstream is empty: set config.jetstream.streams to turn the JetStream source on" }}
{{- end }}{{ end }}
{{- with .Values.secrets.redisStreamsUrl }}{{ if and .existingSecret (not $.Values.config.redis_streams) }}
{{- fail "secrets.redisStreamsUrl is set but config.redis_streams is empty: set config.redis_streams.keys to turn the Redis Streams source on" }}
{{- end }}{{ end }}
{{- if .Values.ingress.enabled }}
{{- $server := default dict .Values.config.server }}
{{- $hb := "15s" }}
{{- with $server.heartbeat_interval }}{{ $hb = . }}{{ end }}
{{- $hbS := include "sse-bridge.anyDurationSeconds" (list $hb "config.server.heartbeat_interval") | float64 }}
{{- $read := float64 .Values.ingress.readTimeoutSeconds }}
{{- if gt (mulf $hbS 2.0) $read }}
{{- fail (printf "config.server.heartbeat_interval (%s) must be at most half of ingress.readTimeoutSeconds (%d): the proxy would cut quiet streams between heartbeats" $hb (int .Values.ingress.readTimeoutSeconds)) }}
{{- end }}
{{- if not (or .Values.ingress.trustedProxies $server.trusted_proxies .Values.ingress.perProxyLimits) }}
{{- fail "ingress.enabled: set ingress.trustedProxies to the ingress controller pods' addresses (the per-IP limits then count clients from X-Forwarded-For), or set ingress.perProxyLimits: true to count them per proxy knowingly" }}
{{- end }}
{{- end }}
{{- end }}

{{/* server.trusted_proxies: config.server.trusted_proxies plus ingress.trustedProxies with the
ingress on, without duplicates. */}}
{{- define "sse-bridge.trustedProxies" -}}
{{- $server := default dict .Values.config.server }}
{{- $list := default list $server.trusted_proxies }}
{{- if .Values.ingress.enabled }}
{{- $list = concat $list (default list .Values.ingress.trustedProxies) }}
{{- end }}
{{- toJson (uniq $list) }}
{{- end }}

{{/*
TOML. Helm has toToml, but values arrive as float64 (1024 would become 1024.0, which an
integer key refuses), so values are written here: strings as JSON strings (a valid TOML basic
string), whole numbers as integers, lists inline, maps as inline tables.
*/}}
{{- define "sse-bridge.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{ toRawJson $v }}
{{- else if kindIs "bool" $v -}}
{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "sse-bridge.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }}, {{ end }}{{ $k }} = {{ include "sse-bridge.tomlValue" (get $v $k) }}{{ end -}} }
{{- else -}}
{{ fail (printf "cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{/* One [section] of key = value lines; keys with null values are left out. */}}
{{- define "sse-bridge.tomlSection" -}}
{{- $name := index . 0 }}
{{- $table := index . 1 -}}
[{{ $name }}]
{{- range $k := keys $table | sortAlpha }}
{{- $v := get $table $k }}
{{- if not (kindIs "invalid" $v) }}
{{ $k }} = {{ include "sse-bridge.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* The whole bridge.toml. */}}
{{- define "sse-bridge.bridgeToml" -}}
{{- $c := deepCopy (default dict .Values.config) -}}
{{- $parts := list -}}
{{- $server := merge (dict "listen" (printf "0.0.0.0:%d" (int .Values.containerPorts.http))) (default dict $c.server) -}}
{{- $proxies := include "sse-bridge.trustedProxies" . | fromJsonArray -}}
{{- if $proxies }}{{ $_ := set $server "trusted_proxies" $proxies }}{{ end -}}
{{- with .Values.publicTls }}{{ if .existingSecret -}}
{{- $tls := dict "cert_file" "/etc/sse-bridge-tls/tls.crt" "key_file" "/etc/sse-bridge-tls/tls.key" -}}
{{- if .clientCaKey }}{{ $_ := set $tls "client_ca_file" (printf "/etc/sse-bridge-tls/%s" .clientCaKey) }}{{ end -}}
{{- $_ := set $server "tls" $tls -}}
{{- end }}{{ end -}}
{{- $parts = append $parts (include "sse-bridge.tomlSection" (list "server" $server)) -}}
{{- $admin := merge (dict "listen" (printf "0.0.0.0:%d" (int .Values.containerPorts.admin))) (default dict $c.admin) -}}
{{- $parts = append $parts (include "sse-bridge.tomlSection" (list "admin" $admin)) -}}
{{- $how := printf "%v%% of resources.limits.memory (%v)" .Values.memoryBudgetPercent .Values.resources.limits.memory -}}
{{- if and $c.memory $c.memory.limit }}{{ $how = "config.memory.limit" }}{{ end -}}
{{- $memory := dict "limit" (include "sse-bridge.memoryBudget" . | int64) -}}
{{- $parts = append $parts (printf "# memory.limit: %s.\n%s" $how (include "sse-bridge.tomlSection" (list "memory" $memory))) -}}
{{- with .Values.secrets.authKeys }}{{ if .existingSecret -}}
{{- $file := ternary "public_key_file" "jwks_file" (eq .format "pem") -}}
{{- $_ := set $c "auth" (merge (dict $file (printf "/etc/sse-bridge-auth/%s" .key)) (default dict $c.auth)) -}}
{{- end }}{{ end -}}
{{- range $section := list "publish" "nats" "redis" "jetstream" "redis_streams" "resume" "replay" "limits" "log" "fanout" "telemetry" -}}
{{- $t := get $c $section -}}
{{- if $t -}}
{{- $parts = append $parts (include "sse-bridge.tomlSection" (list $section $t)) -}}
{{- end -}}
{{- end -}}
{{- with $c.auth -}}
{{- $rules := default list .rules -}}
{{- $parts = append $parts (include "sse-bridge.tomlSection" (list "auth" (omit . "rules"))) -}}
{{- range $rule := $rules -}}
{{- $parts = append $parts (include "sse-bridge.tomlSection" (list "[auth.rules]" $rule)) -}}
{{- end -}}
{{- end -}}
{{- range $rule := $c.delivery -}}
{{- $parts = append $parts (include "sse-bridge.tomlSection" (list "[delivery]" $rule)) -}}
{{- end -}}
# Rendered by the sse-bridge Helm chart {{ .Chart.Version }} from the release's values.
# Every key: docs/configuration.md. Set by the chart: server.listen, admin.listen, memory.limit
# (and auth.public_key_file or auth.jwks_file with secrets.authKeys, server.tls with publicTls).

{{ join "\n\n" $parts }}
{{ end }}
