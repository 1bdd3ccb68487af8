{{/* Shared helpers. Component helpers live in _operator.tpl and _router.tpl. */}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "kubediffusion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix: the release name, plus the chart name unless the release name already holds it.
Truncated so that "<fullname>-operator" and the like stay within 63 characters.
*/}}
{{- define "kubediffusion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-name-version, for the helm.sh/chart label. */}}
{{- define "kubediffusion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource, except the ones the component selector labels add (name, instance,
component). Versions live here, never in selectors.
*/}}
{{- define "kubediffusion.commonLabels" -}}
helm.sh/chart: {{ include "kubediffusion.chart" . }}
app.kubernetes.io/part-of: kubediffusion
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of resources that belong to no single component (NetworkPolicies). */}}
{{- define "kubediffusion.labels" -}}
{{ include "kubediffusion.commonLabels" . }}
app.kubernetes.io/name: {{ include "kubediffusion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The namespace whose ImageModels are served ("" when all namespaces are). */}}
{{- define "kubediffusion.watchNamespace" -}}
{{- if not .Values.watch.allNamespaces }}
{{- default .Release.Namespace .Values.watch.namespace }}
{{- end }}
{{- end }}

{{/* Namespaces that get the model NetworkPolicies: the watched one (or the release's) plus extras. */}}
{{- define "kubediffusion.modelNamespaces" -}}
{{- $first := default .Release.Namespace (include "kubediffusion.watchNamespace" .) }}
{{- $all := prepend .Values.networkPolicy.extraNamespaces $first | uniq }}
{{- toJson $all }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, then the tag, then appVersion.
Usage: include "kubediffusion.image" (dict "image" .Values.operator.image "context" $)
*/}}
{{- define "kubediffusion.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .context.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Labels that identify the model pods the operator creates (docs/contracts.md). */}}
{{- define "kubediffusion.inference.selectorLabels" -}}
app.kubernetes.io/name: kubediffusion-inference
{{- end }}

{{/* The model server's one port, named http: the Images API and GET /metrics (kubediffusion/imagemodel/names.py). */}}
{{- define "kubediffusion.inference.port" -}}
8000
{{- end }}

{{/*
Namespaces whose model pods the PodMonitor scrapes, as a PodMonitor namespaceSelector: every namespace
when all are watched, else the ones that get the model NetworkPolicies.
*/}}
{{- define "kubediffusion.inference.namespaceSelector" -}}
{{- if .Values.watch.allNamespaces }}
any: true
{{- else }}
matchNames:
  {{- include "kubediffusion.modelNamespaces" . | fromJsonArray | toYaml | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A Role + RoleBinding in the watched namespace, or a ClusterRole + ClusterRoleBinding when every
namespace is watched. Usage:
  include "kubediffusion.rbac" (dict "name" <role name> "serviceAccount" <sa name> "labels" <labels yaml>
                                     "rules" <rules yaml> "context" $)
*/}}
{{- define "kubediffusion.rbac" -}}
{{- $ctx := .context }}
{{- $cluster := $ctx.Values.watch.allNamespaces }}
{{- $ns := include "kubediffusion.watchNamespace" $ctx }}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $cluster }}ClusterRole{{ else }}Role{{ end }}
metadata:
  name: {{ .name }}
  {{- if not $cluster }}
  namespace: {{ $ns }}
  {{- end }}
  labels:
    {{- .labels | nindent 4 }}
rules:
  {{- .rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $cluster }}ClusterRoleBinding{{ else }}RoleBinding{{ end }}
metadata:
  name: {{ .name }}
  {{- if not $cluster }}
  namespace: {{ $ns }}
  {{- end }}
  labels:
    {{- .labels | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ if $cluster }}ClusterRole{{ else }}Role{{ end }}
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .serviceAccount }}
    namespace: {{ $ctx.Release.Namespace }}
{{- end }}

{{/*
Address ranges a download may not reach unless downloads.allowedNetworks holds them: the ranges of
fetch-model's download policy (kubediffusion/fetch/policy.py; tests/unit/chart compares the two), as
JSON lists for the cache Jobs' NetworkPolicy `except`.
*/}}
{{- define "kubediffusion.downloads.blockedIPv4" -}}
["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
 "224.0.0.0/4", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4"]
{{- end }}
{{- define "kubediffusion.downloads.blockedIPv6" -}}
["::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8", "::/96", "100::/64", "2001:db8::/32", "fec0::/10"]
{{- end }}

{{/*
The OTLP collector of tracing.otlpEndpoint, for the model pods' egress NetworkPolicy (a policy cannot
name a host): its port (the URL's, else 80 or 443), and its peers: tracing.egressTo, else what the
host says: an IP address (that address), a bare Service name (the pods' own namespace), or
`<service>.<namespace>` optionally followed by `.svc` and the cluster domain (that namespace). Any other
host fails the render with a message asking for tracing.egressTo.
*/}}
{{- define "kubediffusion.tracing.port" -}}
{{- $url := urlParse .Values.tracing.otlpEndpoint }}
{{- regexFind ":[0-9]+$" $url.host | trimPrefix ":" | default (ternary "443" "80" (eq $url.scheme "https")) }}
{{- end }}
{{- define "kubediffusion.tracing.egressTo" -}}
{{- if .Values.tracing.egressTo }}
{{- toYaml .Values.tracing.egressTo }}
{{- else }}
{{- $host := regexReplaceAll ":[0-9]+$" (urlParse .Values.tracing.otlpEndpoint).host "" }}
{{- $labels := splitList "." $host }}
{{- if regexMatch "^[0-9]+(\\.[0-9]+){3}$" $host }}
- ipBlock:
    cidr: {{ $host }}/32
{{- else if hasPrefix "[" $host }}
- ipBlock:
    cidr: {{ $host | trimPrefix "[" | trimSuffix "]" }}/128
{{- else if eq (len $labels) 1 }}
- podSelector: {}
{{- else if or (eq (len $labels) 2) (eq (index $labels 2) "svc") }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ index $labels 1 }}
{{- else }}
{{- fail (printf "tracing.otlpEndpoint: %s is not a Service name (<service>.<namespace>[.svc...]) or an IP address: list where model pods may send spans in tracing.egressTo" $host) }}
{{- end }}
{{- end }}
{{- end }}
