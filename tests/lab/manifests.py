"""The seed's manifests (frontend Deployment, backend Pod, netpod), as users apply them."""

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
"""

FRONTEND = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: frontend
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      role: frontend
  template:
    metadata:
      labels:
        role: frontend
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: frontend
  namespace: network-policy-test
spec:
  selector:
    role: frontend
  ports:
  - protocol: TCP
    port: 80
    targetPort: 80
"""

BACKEND = """\
apiVersion: v1
kind: Pod
metadata:
  name: backend
  labels:
    role: backend
spec:
  containers:
  - name: busybox
    image: busybox
    command: ['sh', '-c', 'echo Backend Pod is Running; sleep 3600']
"""

NETPOD = """\
apiVersion: v1
kind: Pod
metadata:
  name: netpod
  labels:
    app: netpod
spec:
  nodeName: {node}
  containers:
  - name: netshoot-pod
    image: nicolaka/netshoot
    command: ["tail"]
    args: ["-f", "/dev/null"]
  terminationGracePeriodSeconds: 0
"""


def seed(ns="network-policy-test", replicas=2, node="node1"):
    return "---\n".join([NAMESPACE.format(ns=ns), FRONTEND.format(replicas=replicas), BACKEND,
                         NETPOD.format(node=node)])
