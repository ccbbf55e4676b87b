{{/* The name of every object. */}}
{{- define "log-processor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "log-processor.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "log-processor.labels" -}}
{{ include "log-processor.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
The grace period in seconds: the shutdown deadline plus its margin, rounded up to a second,
plus the slack. A margin below the daemon's minimum (2000 ms) fails the rendering, as it would
fail the daemon's start. The daemon refuses to start when
LP_GRACE_PERIOD_MS is shorter than deadline + margin, and this is where both come from.
*/}}
{{- define "log-processor.graceSeconds" -}}
{{- if lt (int .Values.shutdown.marginMs) 2000 -}}
{{- fail "shutdown.marginMs must be at least 2000 (LP_SHUTDOWN_MARGIN_MS: the daemon refuses less)" -}}
{{- end -}}
{{- $ms := add (int .Values.shutdown.deadlineMs) (int .Values.shutdown.marginMs) -}}
{{- add (div (add $ms 999) 1000) (int .Values.shutdown.slackSeconds) -}}
{{- end -}}
