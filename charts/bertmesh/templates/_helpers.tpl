{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "bertmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: fullnameOverride, else "<release>-<name>", else the release name alone when it
already contains the chart name ("bertmesh" installed as "bertmesh" gives "bertmesh", not "bertmesh-bertmesh").
Truncated to 50 characters so that with its longest suffix ("-strict-mtls") a name is still a 63-character DNS label.
*/}}
{{- define "bertmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "bertmesh-0.1.0", for the helm.sh/chart label. */}}
{{- define "bertmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object of the release carries (the CRD excepted: it is the operator's file, byte for byte). */}}
{{- define "bertmesh.labels" -}}
helm.sh/chart: {{ include "bertmesh.chart" . }}
{{ include "bertmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bertmesh
{{- end -}}

{{/* Labels that select the operator's pod: immutable once the Deployment exists. */}}
{{- define "bertmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bertmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "bertmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bertmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest when a digest is given, else repository:tag (tag defaults to appVersion). */}}
{{- define "bertmesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, as a list: empty in cluster scope. */}}
{{- define "bertmesh.watchedNamespaces" -}}
{{- if eq .Values.scope "namespaced" -}}
{{- toJson .Values.namespaces -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* The namespaces that get a namespace-wide STRICT PeerAuthentication. */}}
{{- define "bertmesh.strictNamespaces" -}}
{{- $listed := .Values.mesh.peerAuthentication.namespaces -}}
{{- if $listed -}}
{{- toJson $listed -}}
{{- else -}}
{{- include "bertmesh.watchedNamespaces" . -}}
{{- end -}}
{{- end -}}

{{/* The sidecar.istio.io/inject label of the operator's and the test's pods. */}}
{{- define "bertmesh.sidecarLabel" -}}
sidecar.istio.io/inject: {{ .Values.mesh.injectSidecar | toString | quote }}
{{- end -}}
