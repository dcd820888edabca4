{{/* Parts of the pod template that every Deployment shares. Call each with (dict "root" $ "component" NAME). */}}

{{/* Environment: log filter, S3 keys, Kafka SASL credentials, the service's own secrets, OTLP. */}}
{{- define "lungstream.pod.env" -}}
{{- $values := .root.Values }}
{{- $secret := include "lungstream.secretName" .root }}
- name: RUST_LOG
  value: {{ $values.logLevel | quote }}
# The root file system is read-only; libraries that write caches under $HOME use /tmp.
- name: HOME
  value: /tmp
{{- if eq $values.store.credentials "secret" }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: s3-access-key-id
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: s3-secret-access-key
{{- end }}
{{- if include "lungstream.kafka.sasl" .root }}
# The user name is an environment variable rather than a configuration key so that the
# KEDA TriggerAuthentication can read it from the container.
- name: LUNGSTREAM__KAFKA__PROPERTIES__SASL.USERNAME
  value: {{ $values.kafka.sasl.username | quote }}
- name: LUNGSTREAM__KAFKA__PROPERTIES__SASL.PASSWORD
  valueFrom:
    secretKeyRef:
      {{- if $values.kafka.sasl.passwordSecret.name }}
      name: {{ $values.kafka.sasl.passwordSecret.name }}
      key: {{ $values.kafka.sasl.passwordSecret.key }}
      {{- else }}
      name: {{ $secret }}
      key: kafka-sasl-password
      {{- end }}
{{- end }}
{{- if eq .component "ingest" }}
- name: LUNGSTREAM__PATIENT_KEY_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: patient-key-secret
{{- end }}
{{- if eq .component "report" }}
- name: LUNGSTREAM__DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: database-url
{{- end }}
{{- if $values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $values.otel.protocol | quote }}
{{- end }}
{{- with (index $values .component).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lungstream.pod.volumes" -}}
{{- $values := .root.Values }}
{{- $component := index $values .component }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $component.tmpSizeLimit }}
- name: config
  configMap:
    name: {{ include "lungstream.fullname" .root }}-config
    items:
      - key: {{ .component }}.toml
        path: config.toml
{{- if include "lungstream.readsTenants" . }}
- name: tenants
  secret:
    secretName: {{ include "lungstream.secretName" .root }}
    defaultMode: 0440
    items:
      - key: tenants.toml
        path: tenants.toml
# The merged configuration contains the tokens, so it stays in memory.
- name: run-config
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- if and (include "lungstream.kafka.tls" .root) $values.kafka.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $values.kafka.tls.caSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $values.kafka.tls.caSecret.key }}
        path: ca.crt
{{- end }}
{{- if and (include "lungstream.kafka.tls" .root) $values.kafka.tls.clientSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $values.kafka.tls.clientSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $values.kafka.tls.clientSecret.certificateKey }}
        path: client.crt
      - key: {{ $values.kafka.tls.clientSecret.privateKeyKey }}
        path: client.key
{{- end }}
{{- if and (eq .component "infer") $values.infer.model.volume }}
- name: models
  {{- toYaml $values.infer.model.volume | nindent 2 }}
{{- end }}
{{- if and (eq .component "report") $values.report.database.caSecret.name }}
- name: db-ca
  secret:
    secretName: {{ $values.report.database.caSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $values.report.database.caSecret.key }}
        path: {{ $values.report.database.caSecret.key }}
{{- end }}
{{- end }}

{{- define "lungstream.pod.volumeMounts" -}}
{{- $values := .root.Values }}
- name: tmp
  mountPath: /tmp
{{- if include "lungstream.readsTenants" . }}
- name: run-config
  mountPath: /etc/lungstream/run
  readOnly: true
{{- else }}
- name: config
  mountPath: /etc/lungstream/config
  readOnly: true
{{- end }}
{{- if and (include "lungstream.kafka.tls" .root) $values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/lungstream/kafka-ca
  readOnly: true
{{- end }}
{{- if and (include "lungstream.kafka.tls" .root) $values.kafka.tls.clientSecret.name }}
- name: kafka-client
  mountPath: /etc/lungstream/kafka-client
  readOnly: true
{{- end }}
{{- if and (eq .component "infer") $values.infer.model.volume }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- if and (eq .component "report") $values.report.database.caSecret.name }}
# The database URL names the file as sslrootcert=/etc/lungstream/db-ca/<key>.
- name: db-ca
  mountPath: /etc/lungstream/db-ca
  readOnly: true
{{- end }}
{{- end }}

{{/*
Init container of ingest and report: appends the tenants table from the Secret to the
service's TOML file, because a TOML array of tables cannot be set by environment
variables.
*/}}
{{- define "lungstream.pod.configInit" -}}
- name: config
  image: {{ include "lungstream.image" . }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - /bin/sh
    - -c
    - '{ cat /etc/lungstream/config/config.toml; echo; cat /etc/lungstream/tenants/tenants.toml; } > /etc/lungstream/run/config.toml'
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  volumeMounts:
    - name: config
      mountPath: /etc/lungstream/config
      readOnly: true
    - name: tenants
      mountPath: /etc/lungstream/tenants
      readOnly: true
    - name: run-config
      mountPath: /etc/lungstream/run
{{- end }}

{{- define "lungstream.pod.probes" -}}
{{- $probes := .root.Values.probes }}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ $probes.startup.periodSeconds }}
  failureThreshold: {{ $probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ $probes.liveness.periodSeconds }}
  timeoutSeconds: {{ $probes.liveness.timeoutSeconds }}
  failureThreshold: {{ $probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ $probes.readiness.periodSeconds }}
  timeoutSeconds: {{ $probes.readiness.timeoutSeconds }}
  failureThreshold: {{ $probes.readiness.failureThreshold }}
{{- end }}
