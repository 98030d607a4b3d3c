{{- define "issuelock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "issuelock.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "issuelock.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "issuelock.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "issuelock.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "issuelock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: issuelock
{{- end }}

{{- define "issuelock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "issuelock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "issuelock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "issuelock.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The pod's labels: podLabels plus the chart's (which win, the selector depends on them). */}}
{{- define "issuelock.podLabels" -}}
{{- toYaml (merge (dict) (include "issuelock.labels" . | fromYaml) .Values.podLabels) }}
{{- end }}

{{/* The controller's election Lease (in the release namespace): per release unless set. */}}
{{- define "issuelock.leaseName" -}}
{{- .Values.controller.leaderElection.leaseName | default (printf "%s-controller" (include "issuelock.fullname" .)) }}
{{- end }}

{{/* The role workers are bound to: a ClusterRole, or a Role in each worker namespace when
the controller watches one namespace. Named after the release, so `issuelock-worker` for
a release named issuelock. */}}
{{- define "issuelock.workerRoleName" -}}
{{- printf "%s-worker" (include "issuelock.fullname" .) }}
{{- end }}

{{/* Labels of the helm test pod (not the controller's selector labels). */}}
{{- define "issuelock.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "issuelock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: issuelock
{{- end }}
