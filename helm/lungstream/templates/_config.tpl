{{/*
The services' TOML configuration files. Each service gets the shared settings (HTTP
address, store, Kafka, retry), then its own, then `<service>.config` from values merged
over both. Secrets are not in these files: they reach the services as environment
variables (`LUNGSTREAM__…`, `AWS_*`), and the tenants table is appended from the Secret
by an init container.
*/}}

{{/* Fills .config with the shared settings. Call with (dict "root" $ "config" MAP). */}}
{{- define "lungstream.config.common" -}}
{{- $values := .root.Values }}
{{- $protocol := upper $values.kafka.securityProtocol }}
{{- if not (has $protocol (list "PLAINTEXT" "SASL_PLAINTEXT" "SSL" "SASL_SSL")) }}
{{- fail (printf "kafka.securityProtocol %q is invalid: expected PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL" $values.kafka.securityProtocol) }}
{{- end }}
{{- $_ := set .config "http_listen" (include "lungstream.httpListen" .root) }}
{{- $_ = set .config "store_url" $values.store.url }}
{{- $store := dict "aws_region" $values.store.region }}
{{- if $values.store.endpoint }}
{{- $_ = set $store "aws_endpoint" $values.store.endpoint }}
{{- end }}
{{- if $values.store.allowHttp }}
{{- $_ = set $store "aws_allow_http" "true" }}
{{- end }}
{{- $_ = set .config "store_options" (mergeOverwrite $store (deepCopy ($values.store.options | default dict))) }}
{{- $properties := dict "security.protocol" $protocol }}
{{- if include "lungstream.kafka.sasl" .root }}
{{- $mechanism := upper $values.kafka.sasl.mechanism }}
{{- if not (has $mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) }}
{{- fail (printf "kafka.sasl.mechanism %q is invalid: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" $values.kafka.sasl.mechanism) }}
{{- end }}
{{- if not $values.kafka.sasl.username }}
{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol %s" $protocol) }}
{{- end }}
{{- $_ = set $properties "sasl.mechanism" $mechanism }}
{{- end }}
{{- if include "lungstream.kafka.tls" .root }}
{{- if $values.kafka.tls.caSecret.name }}
{{- $_ = set $properties "ssl.ca.location" (include "lungstream.kafka.caPath" .root) }}
{{- end }}
{{- if $values.kafka.tls.clientSecret.name }}
{{- $_ = set $properties "ssl.certificate.location" (include "lungstream.kafka.clientCertificatePath" .root) }}
{{- $_ = set $properties "ssl.key.location" (include "lungstream.kafka.clientKeyPath" .root) }}
{{- end }}
{{- end }}
{{- $kafka := dict
  "brokers" $values.kafka.brokers
  "topic_prefix" $values.kafka.topicPrefix
  "partitions" (int64 $values.kafka.partitions)
  "replication_factor" (int64 $values.kafka.replicationFactor)
  "properties" (mergeOverwrite $properties (deepCopy ($values.kafka.properties | default dict))) }}
{{- $_ = set .config "kafka" $kafka }}
{{- if $values.retry }}
{{- $_ = set .config "retry" (deepCopy $values.retry) }}
{{- end }}
{{- end }}

{{/* A service's whole TOML file. Call with (dict "root" $ "component" NAME). */}}
{{- define "lungstream.config" -}}
{{- $values := .root.Values }}
{{- $config := dict }}
{{- include "lungstream.config.common" (dict "root" .root "config" $config) }}
{{- if eq .component "ingest" }}
{{- $_ := set $config "limits" (dict "max_request_bytes" (int64 $values.ingest.maxRequestBytes) "max_associations" (int64 $values.ingest.dicom.maxAssociations)) }}
{{- if $values.ingest.dicom.enabled }}
{{- $_ = set $config "dicom_listen" (printf "0.0.0.0:%d" (int $values.ingest.dicom.port)) }}
{{- $_ = set $config "ae_title" $values.ingest.dicom.aeTitle }}
{{- end }}
{{- else if eq .component "assemble" }}
{{- $_ := set $config "assembler" (dict "group_id" $values.assemble.consumerGroup "quiet_period_s" $values.assemble.quietPeriodSeconds "expiry_s" $values.assemble.expirySeconds) }}
{{- else if eq .component "preprocess" }}
{{- $_ := set $config "download_concurrency" (int64 $values.preprocess.downloadConcurrency) }}
{{- $_ = set $config "max_series_bytes" (int64 $values.preprocess.maxSeriesBytes) }}
{{- $_ = set $config "threads" (int64 $values.preprocess.threads) }}
{{- if $values.preprocess.consumerGroup }}
{{- $_ = set $config.kafka "group_id" $values.preprocess.consumerGroup }}
{{- end }}
{{- else if eq .component "infer" }}
{{- $device := $values.infer.device | default (ternary "cuda" "cpu" $values.infer.gpu.enabled) }}
{{- $_ := set $config "device" $device }}
{{- $_ = set $config "network" $values.infer.network }}
{{- $_ = set $config "batch" (int64 $values.infer.batch) }}
{{- $_ = set $config "max_series_per_batch" (int64 $values.infer.maxSeriesPerBatch) }}
{{- $_ = set $config "linger_ms" (int64 $values.infer.lingerMs) }}
{{- $_ = set $config "threads" (int64 $values.infer.threads) }}
{{- if $values.infer.model.path }}
{{- $_ = set $config "model" $values.infer.model.path }}
{{- end }}
{{- if $values.infer.consumerGroup }}
{{- $_ = set $config.kafka "group_id" $values.infer.consumerGroup }}
{{- end }}
{{- else if eq .component "report" }}
{{- $_ := set $config "database_max_connections" (int64 $values.report.databaseMaxConnections) }}
{{- $_ = set $config "group_id" $values.report.consumerGroup }}
{{- end }}
{{- $config = mustMergeOverwrite $config (deepCopy ((index $values .component).config | default dict)) }}
{{- printf "# %s service configuration, written by the lungstream chart. Secrets come from\n# environment variables.\n" .component }}
{{- include "lungstream.toml" (dict "table" $config "path" "") }}
{{ end }}

{{/* Whether a component reads the tenants table (and so gets the merging init container). */}}
{{- define "lungstream.readsTenants" -}}
{{- if has .component (list "ingest" "report") }}true{{ end }}
{{- end }}

{{/* Path of the TOML file a component's container reads. */}}
{{- define "lungstream.configPath" -}}
{{- if include "lungstream.readsTenants" . }}/etc/lungstream/run/config.toml{{ else }}/etc/lungstream/config/config.toml{{ end }}
{{- end }}
