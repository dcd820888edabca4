{{/* Names, labels, images and the TOML writer shared by every template. */}}

{{- define "lungstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: the release name, followed by the chart name unless the
release name already contains it. Kept at 50 characters so that Service names such as
"<prefix>-ingest-dicom" stay within the 63-character limit of DNS labels.
*/}}
{{- define "lungstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a component's resources. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "lungstream.componentName" -}}
{{- printf "%s-%s" (include "lungstream.fullname" .root) .component }}
{{- end }}

{{- define "lungstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource; call with (dict "root" $ "component" NAME), NAME may be "". */}}
{{- define "lungstream.labels" -}}
helm.sh/chart: {{ include "lungstream.chart" .root }}
{{ include "lungstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: lungstream
{{- end }}

{{- define "lungstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lungstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Image of a component; assemble runs the ingest image. Call with (dict "root" $ "component" NAME). */}}
{{- define "lungstream.image" -}}
{{- $source := ternary "ingest" .component (eq .component "assemble") }}
{{- $image := (index .root.Values $source).image }}
{{- $tag := $image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- printf "%s%s:%s" .root.Values.image.registry $image.repository $tag }}
{{- end }}

{{- define "lungstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lungstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret with the keys listed under `secrets` in values.yaml. */}}
{{- define "lungstream.secretName" -}}
{{- default (include "lungstream.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* HTTP listen address of every service, with brackets for an IPv6 address. */}}
{{- define "lungstream.httpListen" -}}
{{- if contains ":" .Values.listenAddress }}
{{- printf "[%s]:%d" .Values.listenAddress (int .Values.httpPort) }}
{{- else }}
{{- printf "%s:%d" .Values.listenAddress (int .Values.httpPort) }}
{{- end }}
{{- end }}

{{/* Kafka security: "true" when the protocol uses SASL or TLS, empty otherwise. */}}
{{- define "lungstream.kafka.sasl" -}}
{{- if hasPrefix "SASL_" (upper .Values.kafka.securityProtocol) }}true{{ end }}
{{- end }}

{{- define "lungstream.kafka.tls" -}}
{{- if has (upper .Values.kafka.securityProtocol) (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/*
Consumer group and input topic of the lag-scaled services, as the services name them:
the topic prefix, then the group (`kafka.group_id`, by default the service's own group)
or topic. scripts/chart-check compares the defaults with the Rust sources.
*/}}
{{- define "lungstream.consumerGroup" -}}
{{- $defaults := dict "preprocess" "lungstream-preprocess" "infer" "lungstream-infer" }}
{{- $values := index .root.Values .component }}
{{- printf "%s%s" .root.Values.kafka.topicPrefix ($values.consumerGroup | default (get $defaults .component)) }}
{{- end }}

{{- define "lungstream.inputTopic" -}}
{{- $topics := dict "preprocess" "ct.series.v1" "infer" "ct.lobes.v1" }}
{{- printf "%s%s" .root.Values.kafka.topicPrefix (get $topics .component) }}
{{- end }}

{{/* Mount points of the Kafka TLS files. */}}
{{- define "lungstream.kafka.caPath" -}}/etc/lungstream/kafka-ca/ca.crt{{- end }}
{{- define "lungstream.kafka.clientCertificatePath" -}}/etc/lungstream/kafka-client/client.crt{{- end }}
{{- define "lungstream.kafka.clientKeyPath" -}}/etc/lungstream/kafka-client/client.key{{- end }}

{{/*
Writes a map as TOML: scalars and arrays of scalars first, then tables, then arrays of
tables, each sorted by key. Null values are left out, so a `config` override of null
removes a key. Call with (dict "table" MAP "path" "").
*/}}
{{- define "lungstream.toml" -}}
{{- $table := .table }}
{{- $path := .path }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (include "lungstream.toml.isTableArray" $value)) }}
{{ include "lungstream.toml.key" $key }} = {{ include "lungstream.toml.value" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}
{{- $full := include "lungstream.toml.key" $key }}
{{- if $path }}{{ $full = printf "%s.%s" $path $full }}{{ end }}

[{{ $full }}]
{{- include "lungstream.toml" (dict "table" $value "path" $full) }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if include "lungstream.toml.isTableArray" $value }}
{{- $full := include "lungstream.toml.key" $key }}
{{- if $path }}{{ $full = printf "%s.%s" $path $full }}{{ end }}
{{- range $item := $value }}

[[{{ $full }}]]
{{- include "lungstream.toml" (dict "table" $item "path" $full) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Nested conditions: templates of Go before 1.18 (Helm before 3.9) evaluate every operand of `and`. */}}
{{- define "lungstream.toml.isTableArray" -}}
{{- if kindIs "slice" . }}{{ if gt (len .) 0 }}{{ if kindIs "map" (index . 0) }}true{{ end }}{{ end }}{{ end }}
{{- end }}

{{- define "lungstream.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
A TOML value. Helm reads every number of a values file as a float, so whole numbers are
written as integers; the services accept integers for their floating-point settings too.
*/}}
{{- define "lungstream.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "lungstream.toml.value" $item }}{{ end }}]
{{- else }}{{ fail (printf "lungstream: cannot write %v (%s) as a TOML value" . (kindOf .)) }}
{{- end }}
{{- end }}
