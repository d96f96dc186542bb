// Package deploy holds how operators install nsmount on a Kubernetes
// cluster: the Helm chart (helm/nsmount) and the same rendered as plain
// manifests (manifests/nsmount.yaml). It has no code of its own.
//
// Its tests render the chart with Helm's Go library, decode every object
// strictly into the Kubernetes API types, check the DaemonSet, CSIDriver,
// Service and policy against the agent's contract, evaluate the pod template
// with the Pod Security Admission library, and fail when the committed plain
// manifests differ from the chart's render. Helm and the Kubernetes modules
// are imported by those tests only: no product package links them.
//
// After a change to the chart, regenerate the plain manifests with
//
//	go generate ./deploy
package deploy

//go:generate go test -run ^TestManifestsCurrent$ -count=1 . -args -update
