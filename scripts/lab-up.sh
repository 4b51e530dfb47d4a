#!/usr/bin/env bash
# Quick start, command one: install what is needed, build, bring up the three-node lab cluster
# with cluster.yml, run the seed's pods on it and show them talking across nodes and through the
# frontend Service, and Hubble showing the flows.
# Run as root on Debian 12. Tear down with:
#   .venv/bin/ansible-playbook -i inventory/lab reset.yml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ansible-playbook -i inventory/lab cluster.yml "$@"
echo
# The cluster is upstream Kubernetes: kubectl with the lab's admin.conf (Kubespray's artifacts/kubectl.sh,
# which runs it inside the lab: the lab's API server is not reachable from the host's own namespace).
kubectl=inventory/lab/artifacts/kubectl.sh
$kubectl get nodes -o wide
$kubectl cluster-info
echo
apiary lab get nodes
echo
# The seed's workloads, with kubectl as the seed applies them: namespace, frontend Deployment (2 nginx)
# and its Service, backend (busybox), netpod (netshoot) on node2.
seed=examples/network-policy-test
$kubectl apply -f "$seed/namespace.yaml"
for manifest in frontend-deployment frontend-service backend-pod netpod; do
  $kubectl apply -n network-policy-test -f "$seed/$manifest.yaml"
done
$kubectl rollout status -n network-policy-test deployment/frontend --timeout=180s
$kubectl wait -n network-policy-test --for=condition=Ready pod --all --timeout=180s
$kubectl get pods -n network-policy-test -o wide
echo
for ip in $($kubectl get pods -n network-policy-test -o jsonpath='{.items[*].status.podIP}'); do
  $kubectl exec -n network-policy-test netpod -- ping -c 1 -W 2 "$ip" | grep 'bytes from'
done
echo
# The seed: the backend fetches the frontend page through the Service, by name.
$kubectl exec -n network-policy-test backend -- wget -qO- http://frontend | grep '<title>'
apiary service list --node node2
echo
apiary endpoint list --node node2
echo
# Hubble: the flows every node saw, through the relay (here the backend's fetch, translated by the
# socket load balancer, then the connection: policy verdicts and traces on both nodes), and its status.
apiary observe --pod network-policy-test/backend --protocol tcp --first 7
apiary status --node node1 | grep -E '^(Hubble|Kernel drops|Kubernetes)'
