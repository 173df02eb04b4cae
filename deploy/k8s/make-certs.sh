#!/bin/sh
# Make the TLS files the manifests mount (docs/deploy.md, "TLS"): a CA, one node certificate
# for the SCs and one for the SPUs naming their stable DNS names, and a client certificate
# for an operator. Then print the kubectl commands that store them as Secrets.
#
#   deploy/k8s/make-certs.sh DIR [NAMESPACE [CLUSTER_DOMAIN]]
#
# One certificate per StatefulSet, with a wildcard for its pods' names: every pod of a
# StatefulSet mounts the same Secret, so per-pod certificates would not keep one pod's key
# from another. 127.0.0.1 is named too: kolk-probe and `kubectl exec ... kolk` dial the node
# from inside its pod.
set -eu
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
    echo "usage: $0 DIR [NAMESPACE [CLUSTER_DOMAIN]]" >&2
    exit 2
fi
dir=$1
ns=${2:-kolk}
domain=${3:-cluster.local}
mkdir -p "$dir"
kolk cert ca --out "$dir" --cn "Kolk CA ($ns)"
kolk cert issue kolk-sc --ca "$dir" --out "$dir" --kind node \
    --dns "*.kolk-sc.$ns.svc.$domain" --dns "kolk.$ns.svc.$domain" --dns "kolk.$ns.svc" \
    --ip 127.0.0.1
kolk cert issue kolk-spu --ca "$dir" --out "$dir" --kind node \
    --dns "*.kolk-spu.$ns.svc.$domain" --ip 127.0.0.1
kolk cert issue admin --ca "$dir" --out "$dir" --kind client
cat <<EOT

Store them (the CA key ca.key stays with you, never in the cluster):
  kubectl create namespace $ns
  kubectl -n $ns create secret generic kolk-sc-tls --from-file=ca.crt=$dir/ca.crt \\
      --from-file=tls.crt=$dir/kolk-sc.crt --from-file=tls.key=$dir/kolk-sc.key
  kubectl -n $ns create secret generic kolk-spu-tls --from-file=ca.crt=$dir/ca.crt \\
      --from-file=tls.crt=$dir/kolk-spu.crt --from-file=tls.key=$dir/kolk-spu.key
  kubectl -n $ns create secret generic kolk-cluster-secret \\
      --from-literal=secret="\$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
EOT
