{{- define "sbm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The manager's Deployment, Service and ServiceAccount. */}}
{{- define "sbm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- "sandbox-manager" }}
{{- end }}
{{- end }}

{{/* sandbox-xds and the gateway keep fixed names: ingress.dataplaneService defaults to
  `sandbox-gateway`, and the gateways' bootstrap names the xds Service. */}}
{{- define "sbm.xdsName" -}}sandbox-xds{{- end }}
{{- define "sbm.gatewayName" -}}sandbox-gateway{{- end }}

{{- define "sbm.labels" -}}
app.kubernetes.io/name: {{ include "sbm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kruise-agents
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of one component (manager, xds, gateway). */}}
{{- define "sbm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sbm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sbm.serviceAccountName" -}}
{{- default "sandbox-manager" .Values.serviceAccount.name }}
{{- end }}

{{/* The two values the guide makes required, checked wherever they are used. */}}
{{- define "sbm.adminApiKey" -}}
{{- $k := required "e2b.adminApiKey is required: --set e2b.adminApiKey=<key> (e2b_ followed by 40 lowercase hex digits)" .Values.e2b.adminApiKey }}
{{- if not (regexMatch "^e2b_[0-9a-f]{40}$" $k) }}
{{- fail "e2b.adminApiKey must be e2b_ followed by 40 lowercase hex digits (the E2B SDKs check that shape); e.g. echo e2b_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \\n')" }}
{{- end }}
{{- $k }}
{{- end }}
{{- define "sbm.ingressClassName" -}}
{{- required "ingress.className is required: --set ingress.className=<IngressClass, e.g. nginx>" .Values.ingress.className }}
{{- end }}

{{/* imagePullSecrets: the guide's default is {} (a map); a list of names or of {name: …}
  objects, or a map name → anything, all work. */}}
{{- define "sbm.imagePullSecrets" -}}
{{- $s := .Values.imagePullSecrets }}
{{- if $s }}
imagePullSecrets:
{{- if kindIs "map" $s }}
{{- range $k, $_ := $s }}
  - name: {{ $k }}
{{- end }}
{{- else }}
{{- range $s }}
{{- if kindIs "string" . }}
  - name: {{ . }}
{{- else }}
  - {{ toJson . }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* cpu/memory of the guide's resources blocks: requests = limits. */}}
{{- define "sbm.resources" -}}
requests:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory | quote }}
limits:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory | quote }}
{{- end }}

{{/* controller.logLevel (klog verbosity) as a tracing filter. */}}
{{- define "sbm.rustLog" -}}
{{- $v := int .Values.controller.logLevel }}
{{- if le $v 1 }}warn,sandbox_manager=warn
{{- else if le $v 4 }}info,kube=warn
{{- else if le $v 6 }}info,kube=warn,sandbox_manager=debug,sandbox_core=debug
{{- else }}debug,sandbox_manager=trace,sandbox_core=trace
{{- end }}
{{- end }}

{{- define "sbm.xdsAddress" -}}
http://{{ include "sbm.xdsName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.xds.grpcPort }}
{{- end }}
