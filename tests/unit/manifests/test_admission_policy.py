"""daemonset/12-admission-node.yaml: the ValidatingAdmissionPolicy that limits the node agent's pod
patches to pods of its own node and to the ``nodemesh.io/redirection`` annotation.

The policy's own CEL (read from the YAML) is evaluated with cel-python the way the API server
evaluates it: ``matchConstraints`` and ``matchConditions`` select the request; ``variables`` are
evaluated in order, each seeing only the ones before it (an expression error is kept as the
variable's value and fails whatever uses it, as the server's lazy variables do); every validation
that is false or errs denies (``failurePolicy: Fail``), and the server reports the first one, with
its ``messageExpression`` (here a failing messageExpression fails the test instead of falling back
to ``message`` as the server would).

The requests are AdmissionReview-shaped: ``oldObject`` is a pod as the API server stores it,
``object`` is that pod after the node agent's own patch (node_agent.kube.api.NodeApi.annotate_pod,
a JSON merge patch, applied here per RFC 7386) plus what the API server itself changes before
validating admission (a managedFields entry for the agent's field manager), and ``request`` carries
the ``userInfo`` a pod-bound service-account token gets on Kubernetes 1.30.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import celpy
import pytest
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from node_agent.kube import api as kube_api
from node_agent.kube.state import REDIRECTION_ANNOTATION
from tests.unit.manifests.helpers import DAEMONSET, NAMESPACE, all_docs, find, load_docs
from tests.unit.manifests.test_daemonset import WRITE_VERBS, grants

POLICY = "nodemesh-node-pod-patches"
AGENT = f"system:serviceaccount:{NAMESPACE}:nodemesh-node"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
MY_NODE = "worker-1"
OTHER_NODE = "worker-2"

#: each validation, by a fragment of its static ``message`` (test_checks_name_every_validation)
CHECKS = {
    "token-node": "token names no node",
    "same-node": "only pods of its own node",
    "spec": "spec or status",
    "annotations": "no pod annotation but",
    "metadata": "may not change a pod's metadata",
    "value": "may only be enabled or pending",
}


# ---- the API server's evaluation, offline ----------------------------------------------------


def _cel(value: Any) -> Any:
    return json_to_cel(copy.deepcopy(value))


@dataclass(frozen=True)
class Review:
    """One admission request: ``request``, ``object`` and ``oldObject`` as the server has them."""

    request: dict[str, Any]
    obj: dict[str, Any]
    old: dict[str, Any]

    def activation(self) -> dict[str, Any]:
        return {
            "request": _cel(self.request),
            "object": _cel(self.obj),
            "oldObject": _cel(self.old),
        }


@dataclass(frozen=True)
class Failure:
    check: str
    message: str


@dataclass
class Verdict:
    failures: list[Failure]
    #: variables whose expression raised (none should, on a realistic request)
    variable_errors: dict[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return not self.failures

    @property
    def message(self) -> str:
        """What the API server answers: the first failing validation's message."""
        return self.failures[0].message if self.failures else ""


class Policy:
    """A ValidatingAdmissionPolicy evaluated with cel-python."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.spec = body["spec"]
        self.env = celpy.Environment()
        self.match_conditions = [
            (c["name"], self._compile(c["expression"])) for c in self.spec["matchConditions"]
        ]
        self.variables = [
            (v["name"], self._compile(v["expression"])) for v in self.spec.get("variables", [])
        ]
        self.validations = [
            (
                check_of(v),
                self._compile(v["expression"]),
                self._compile(v["messageExpression"]) if "messageExpression" in v else None,
                v.get("message", f"failed expression: {v['expression']}"),
            )
            for v in self.spec["validations"]
        ]

    def _compile(self, expression: str) -> Any:
        return self.env.program(self.env.compile(expression))

    @staticmethod
    def _run(program: Any, activation: dict[str, Any]) -> Any:
        """The value, or the CELEvalError (celpy both raises and returns them)."""
        try:
            return program.evaluate(activation)
        except CELEvalError as exc:
            return exc

    def matches(self, review: Review) -> bool:
        """matchConstraints.resourceRules, then every matchCondition. An error would deny on the
        server (failurePolicy Fail); here it fails the test."""
        req = review.request
        resource = req["resource"]["resource"]
        if req.get("subResource"):
            resource += "/" + req["subResource"]
        if not any(
            req["operation"] in rule["operations"]
            and req["resource"]["group"] in rule["apiGroups"]
            and req["resource"]["version"] in rule["apiVersions"]
            and resource in rule["resources"]
            for rule in self.spec["matchConstraints"]["resourceRules"]
        ):
            return False
        activation = review.activation()
        for name, program in self.match_conditions:
            result = self._run(program, activation)
            if isinstance(result, CELEvalError):
                raise AssertionError(f"matchCondition {name} failed: {result.args[0]}")
            if not result:
                return False
        return True

    def evaluate(self, review: Review) -> Verdict:
        activation = review.activation()
        variables = celtypes.MapType({})
        errors: dict[str, str] = {}
        for name, program in self.variables:
            # each variable sees only the ones declared before it, as on the server
            value = self._run(program, {**activation, "variables": variables})
            if isinstance(value, CELEvalError):
                errors[name] = str(value.args[0])
            variables = celtypes.MapType({**variables, celtypes.StringType(name): value})
        activation["variables"] = variables
        failures = []
        for check, program, message_program, message in self.validations:
            result = self._run(program, activation)
            if isinstance(result, celtypes.BoolType) and bool(result):
                continue
            if isinstance(result, CELEvalError):
                failures.append(Failure(check, f"expression error: {result.args[0]}"))
                continue
            assert isinstance(result, celtypes.BoolType), f"{check}: not a bool: {result!r}"
            if message_program is not None:
                text = self._run(message_program, activation)
                assert isinstance(text, str), f"{check}: messageExpression gave {text!r}"
                assert str(text).strip() and "\n" not in str(text), f"{check}: {text!r}"
                message = str(text)
            failures.append(Failure(check, message))
        return Verdict(failures, errors)


def check_of(validation: dict[str, Any]) -> str:
    hits = [name for name, fragment in CHECKS.items() if fragment in validation.get("message", "")]
    assert len(hits) == 1, f"which check is {validation}? {hits}"
    return hits[0]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(find("ValidatingAdmissionPolicy", POLICY))


# ---- realistic requests --------------------------------------------------------------------------


def stored_pod(node: str | None = MY_NODE, annotations: dict[str, str] | None = None) -> Any:
    """A Deployment's pod as the API server stores and returns it."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7d4b9c8f6d-x2x9k",
            "generateName": "web-7d4b9c8f6d-",
            "namespace": "shop",
            "uid": "2f1e6a0c-3b7d-4d6e-9a51-0c8f2b7e1d34",
            "resourceVersion": "184467",
            "creationTimestamp": "2024-06-01T10:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6d"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6d",
                "uid": "9c3d1a2b-0000-4000-8000-000000000001",
                "controller": True, "blockOwnerDeletion": True,
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2024-06-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}},
            }],
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80,
                                                                  "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            }],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {
                "defaultMode": 420,
                "sources": [{"serviceAccountToken": {"expirationSeconds": 3607,
                                                     "path": "token"}}],
            }}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default",
            "schedulerName": "default-scheduler", "priority": 0,
            "terminationGracePeriodSeconds": 30, "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority", "securityContext": {},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "podIP": "10.244.1.17", "podIPs": [{"ip": "10.244.1.17"}],
            "hostIP": "192.168.56.11", "qosClass": "Burstable",
            "startTime": "2024-06-01T10:00:01Z",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2024-06-01T10:00:05Z"}],
        },
    }
    if node is not None:
        pod["spec"]["nodeName"] = node
    if annotations:
        pod["metadata"]["annotations"] = dict(annotations)
    return pod


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (application/merge-patch+json)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class _RecordingCore:
    """Stands in for CoreV1Api: records what annotate_pod sends."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, Any]]] = []

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kw: Any) -> None:
        self.calls.append((name, namespace, body, kw))


def agent_patch(value: str | None) -> Any:
    """The body the node agent sends to set (or, with None, remove) the annotation."""
    node_api = kube_api.NodeApi.__new__(kube_api.NodeApi)
    core = _RecordingCore()
    node_api.core = core  # type: ignore[assignment]
    node_api.annotate_pod("shop", "web", REDIRECTION_ANNOTATION, value)
    ((_, _, body, kw),) = core.calls
    # the merge below models exactly this content type
    assert kw["_content_type"] == "application/merge-patch+json"
    return body


def server_update(old: dict[str, Any], patched: dict[str, Any]) -> dict[str, Any]:
    """What the API server makes of a patched pod before validating admission: an empty
    annotations map is not serialized (omitempty), and the field manager records the change."""
    new = copy.deepcopy(patched)
    if not new["metadata"].get("annotations"):
        new["metadata"].pop("annotations", None)
    new["metadata"]["managedFields"] = [
        *old["metadata"].get("managedFields", []),
        {"manager": kube_api.FIELD_MANAGER, "operation": "Update", "apiVersion": "v1",
         "time": "2024-06-01T10:05:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{REDIRECTION_ANNOTATION}": {}}}}},
    ]
    return new


def user(
    username: str = AGENT, node: str | None = MY_NODE, extra: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """userInfo of a pod-bound token (Kubernetes 1.30, ServiceAccountTokenPodNodeInfo on)."""
    info: dict[str, Any] = {
        "username": username,
        "uid": "5b0f2c1e-1111-4222-8333-444455556666",
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                   "system:authenticated"],
    }
    if extra is None:
        extra = {
            "authentication.kubernetes.io/credential-id": ["JTI=0c7a4f44-5d1e-4a7b"],
            "authentication.kubernetes.io/pod-name": ["nodemesh-node-x7k2p"],
            "authentication.kubernetes.io/pod-uid": ["e1d2c3b4-aaaa-4bbb-8ccc-dddd00001111"],
        }
        if node is not None:
            extra[NODE_NAME_EXTRA] = [node]
            extra["authentication.kubernetes.io/node-uid"] = [
                "77aa88bb-cccc-4ddd-8eee-ffff00002222"
            ]
    if extra:  # AdmissionRequest: `extra` is omitempty
        info["extra"] = extra
    return info


def review(
    obj: dict[str, Any],
    old: dict[str, Any],
    user_info: dict[str, Any] | None = None,
    operation: str = "UPDATE",
    sub_resource: str = "",
) -> Review:
    request: dict[str, Any] = {
        "uid": "d9bd2c46-6f3c-4a8e-9f1e-5a2b3c4d5e6f",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": old["metadata"]["name"],
        "namespace": old["metadata"]["namespace"],
        "operation": operation,
        "userInfo": user_info if user_info is not None else user(),
        "options": {"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1",
                    "fieldManager": kube_api.FIELD_MANAGER},
        "dryRun": False,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return Review(request, obj, old)


def annotate(
    value: str | None, old: dict[str, Any] | None = None, user_info: dict[str, Any] | None = None
) -> Review:
    """The node agent sets (or removes) the annotation on ``old``, exactly as it does."""
    old = old if old is not None else stored_pod()
    obj = server_update(old, merge_patch(old, agent_patch(value)))
    return review(obj, old, user_info)


def changed(
    change: Callable[[dict[str, Any]], None],
    old: dict[str, Any] | None = None,
    value: str | None = "enabled",
) -> Review:
    """The agent's annotation patch plus another change to the pod."""
    r = annotate(value, old)
    obj = copy.deepcopy(r.obj)
    change(obj)
    return review(obj, r.old)


# ---- the objects ---------------------------------------------------------------------------------


def test_binding_uses_the_policy_and_denies() -> None:
    docs = load_docs(DAEMONSET / "12-admission-node.yaml")
    assert [d.kind for d in docs] == [
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"
    ]
    (binding,) = [d.body for d in all_docs() if d.kind == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == POLICY
    assert find("ValidatingAdmissionPolicy", binding["spec"]["policyName"])["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    # no matchResources narrowing and no params: the policy's own constraints decide
    assert set(binding["spec"]) == {"policyName", "validationActions"}
    assert binding["apiVersion"] == "admissionregistration.k8s.io/v1"


def test_policy_fails_closed_and_explains(policy: Policy) -> None:
    spec = policy.spec
    assert policy.body["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert spec["failurePolicy"] == "Fail"
    assert "paramKind" not in spec
    for v in spec["validations"]:
        # the API server refuses a message with a line break
        assert v["message"] and "\n" not in v["message"], v


def test_checks_name_every_validation(policy: Policy) -> None:
    """CHECKS (the table's vocabulary) names each validation exactly once."""
    assert sorted(check for check, *_ in policy.validations) == sorted(CHECKS)


def test_resource_rules_are_what_the_node_rbac_writes(policy: Policy) -> None:
    """The policy sees every write the agent's RBAC allows, and nothing more."""
    operation = {"create": "CREATE", "update": "UPDATE", "patch": "UPDATE",
                 "delete": "DELETE", "deletecollection": "DELETE"}
    rbac = {
        (group, resource, operation[verb])
        for _, group, resource, verb, _ in grants("nodemesh-node")
        if verb in WRITE_VERBS
    }
    assert rbac == {("", "pods", "UPDATE")}
    rules = policy.spec["matchConstraints"]["resourceRules"]
    matched = {
        (group, resource, op)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for op in rule["operations"]
    }
    assert matched == rbac
    assert all(rule["apiVersions"] == ["v1"] for rule in rules)
    assert "namespaceSelector" not in policy.spec["matchConstraints"]
    assert "objectSelector" not in policy.spec["matchConstraints"]


# ---- matching ------------------------------------------------------------------------------------


def test_matches_the_agent_only(policy: Policy) -> None:
    assert policy.matches(annotate("enabled"))
    r = annotate("enabled")
    for username in ("system:serviceaccount:nodemesh-system:nodemesh-controller",
                     "system:serviceaccount:kube-system:replicaset-controller",
                     "system:node:worker-1", "kubernetes-admin",
                     "system:serviceaccount:other:nodemesh-node"):
        other = review(r.obj, r.old, user(username))
        assert not policy.matches(other), username
    # the agent's own token without the node extra is still matched (and then denied)
    assert policy.matches(review(r.obj, r.old, user(node=None)))


def test_matches_updates_of_the_pods_resource_only(policy: Policy) -> None:
    r = annotate("enabled")
    assert not policy.matches(review(r.obj, r.old, sub_resource="status"))
    assert not policy.matches(review(r.obj, r.old, sub_resource="ephemeralcontainers"))
    assert not policy.matches(review(r.obj, r.old, operation="CREATE"))
    assert not policy.matches(review(r.obj, r.old, operation="DELETE"))


# ---- the table -----------------------------------------------------------------------------------


ANNOTATED = {"prometheus.io/scrape": "true", REDIRECTION_ANNOTATION: "pending"}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return change


def _meta(key: str, change: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        result = change(copy.deepcopy(obj["metadata"].get(key)))
        if result is None:
            obj["metadata"].pop(key, None)
        else:
            obj["metadata"][key] = result
    return apply


@dataclass(frozen=True)
class Case:
    id: str
    review: Callable[[], Review]
    #: the checks that fail, the first one's message is the answer; empty: allowed
    denied_by: tuple[str, ...] = ()
    #: fragments of the answer
    says: tuple[str, ...] = ()


ALLOWED = [
    Case("pending on a pod without annotations", lambda: annotate("pending")),
    Case("enabled on a pod without annotations", lambda: annotate("enabled")),
    Case("pending -> enabled next to another annotation",
         lambda: annotate("enabled", stored_pod(annotations=ANNOTATED))),
    Case("enabled -> pending",
         lambda: annotate("pending", stored_pod(annotations={REDIRECTION_ANNOTATION: "enabled"}))),
    Case("same value again", lambda: annotate("pending", stored_pod(annotations=ANNOTATED))),
    Case("removed, other annotations stay",
         lambda: annotate(None, stored_pod(annotations=ANNOTATED))),
    Case("removed, the pod's only annotation (the annotations map goes)",
         lambda: annotate(None, stored_pod(annotations={REDIRECTION_ANNOTATION: "enabled"}))),
    Case("resourceVersion differs (an update without one, or the server's)",
         lambda: changed(_set("metadata.resourceVersion", "184468"))),
    Case("resourceVersion absent in the update",
         lambda: changed(_set("metadata.resourceVersion", None))),
    Case("a pod being deleted", lambda: annotate(
        "pending", merge_patch(stored_pod(), {"metadata": {
            "deletionTimestamp": "2024-06-01T11:00:00Z", "deletionGracePeriodSeconds": 30}}))),
]

DENIED = [
    # the node
    Case("a pod of another node", lambda: annotate("enabled", stored_pod(node=OTHER_NODE)),
         ("same-node",), (f'"{MY_NODE}"', f'"{OTHER_NODE}"', "shop/web-7d4b9c8f6d-x2x9k")),
    Case("removing it on a pod of another node",
         lambda: annotate(None, stored_pod(OTHER_NODE, {REDIRECTION_ANNOTATION: "enabled"})),
         ("same-node",), (MY_NODE, OTHER_NODE)),
    Case("a pod not scheduled yet", lambda: annotate("pending", stored_pod(node=None)),
         ("same-node",), (MY_NODE, '""')),
    Case("no extra at all (a token not bound to a pod)",
         lambda: annotate("enabled", user_info=user(extra={})),
         ("token-node", "same-node"), ("names no node", NODE_NAME_EXTRA, "1.30")),
    Case("extra without the node name (feature off, or a token issued before)",
         lambda: annotate("enabled", user_info=user(node=None)),
         ("token-node", "same-node"), ("names no node", "ServiceAccountTokenPodNodeInfo")),
    Case("node name extra empty",
         lambda: annotate("enabled", user_info=user(extra={NODE_NAME_EXTRA: []})),
         ("token-node", "same-node"), ("names no node",)),
    Case("two node names", lambda: annotate(
        "enabled", user_info=user(extra={NODE_NAME_EXTRA: [MY_NODE, OTHER_NODE]})),
         ("token-node", "same-node"), ("names no node",)),
    Case("another node's token, this node's pod",
         lambda: annotate("enabled", user_info=user(node=OTHER_NODE)),
         ("same-node",), (MY_NODE, OTHER_NODE)),
    # the value
    Case("a bogus value", lambda: annotate("disabled"), ("value",),
         (REDIRECTION_ANNOTATION, "enabled or pending", "shop/web-7d4b9c8f6d-x2x9k")),
    Case("an empty value", lambda: annotate(""), ("value",)),
    Case("Enabled (case matters)", lambda: annotate("Enabled"), ("value",)),
    # other annotations
    Case("another annotation added",
         lambda: changed(_meta("annotations", lambda a: {**a, "team": "x"})),
         ("annotations",), ("no annotation of pod shop/web-7d4b9c8f6d-x2x9k",)),
    Case("another annotation changed",
         lambda: changed(_meta("annotations", lambda a: {**a, "prometheus.io/scrape": "false"}),
                         stored_pod(annotations=ANNOTATED)),
         ("annotations",)),
    Case("another annotation removed",
         lambda: changed(_meta("annotations", lambda a: {REDIRECTION_ANNOTATION: "enabled"}),
                         stored_pod(annotations=ANNOTATED)),
         ("annotations",)),
    Case("all annotations removed",
         lambda: changed(_meta("annotations", lambda a: None), stored_pod(annotations=ANNOTATED),
                         value=None),
         ("annotations",)),
    # other metadata
    Case("a label added", lambda: changed(_meta("labels", lambda m: {**m, "evil": "yes"})),
         ("metadata",), ("metadata", "shop/web-7d4b9c8f6d-x2x9k")),
    Case("a label changed", lambda: changed(_meta("labels", lambda m: {**m, "app": "db"})),
         ("metadata",)),
    Case("labels removed", lambda: changed(_meta("labels", lambda m: None)), ("metadata",)),
    Case("a finalizer added", lambda: changed(_set("metadata.finalizers", ["x.io/hold"])),
         ("metadata",)),
    Case("owner references removed", lambda: changed(_meta("ownerReferences", lambda m: None)),
         ("metadata",)),
    Case("generation set", lambda: changed(_set("metadata.generation", 7)), ("metadata",)),
    # spec and status
    Case("the image changed", lambda: changed(
        lambda o: o["spec"]["containers"][0].update(image="evil:latest")), ("spec",),
         ("spec or status of pod shop/web-7d4b9c8f6d-x2x9k",)),
    Case("a toleration added", lambda: changed(
        lambda o: o["spec"]["tolerations"].append({"operator": "Exists"})), ("spec",)),
    Case("activeDeadlineSeconds set", lambda: changed(_set("spec.activeDeadlineSeconds", 1)),
         ("spec",)),
    Case("status changed", lambda: changed(_set("status.phase", "Failed")), ("spec",)),
    # several at once: every one is reported, the first answers
    Case("another node, a label and a bogus value", lambda: changed(
        _meta("labels", lambda m: {**m, "x": "y"}), stored_pod(node=OTHER_NODE), "on"),
         ("same-node", "metadata", "value"), (OTHER_NODE,)),
]


@pytest.mark.parametrize("case", ALLOWED + DENIED, ids=lambda c: c.id)
def test_policy(policy: Policy, case: Case) -> None:
    r = case.review()
    assert policy.matches(r)
    verdict = policy.evaluate(r)
    assert verdict.variable_errors == {}
    assert tuple(f.check for f in verdict.failures) == case.denied_by, verdict.failures
    for fragment in case.says:
        assert fragment in verdict.message, (fragment, verdict.message)


def test_the_table_exercises_every_check() -> None:
    """Each validation gives the answer in some case, so each message is checked, and the test
    below can tell when one stops working."""
    assert {c.denied_by[0] for c in DENIED} == set(CHECKS)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_validation_that_always_passes_is_caught(check: str) -> None:
    """Replace one validation with `true`: some request of the table gets another answer (it is
    let through, or refused for another reason). token-node only ever answers first: the
    same-node check refuses a token without a node too, with a less helpful message."""
    body = copy.deepcopy(find("ValidatingAdmissionPolicy", POLICY))
    for v in body["spec"]["validations"]:
        if check_of(v) == check:
            v["expression"] = "true"
    broken = Policy(body)
    noticed = [
        c.id for c in DENIED
        if tuple(f.check for f in broken.evaluate(c.review()).failures)[:1] != c.denied_by[:1]
    ]
    assert noticed, f"no case notices that {check} always passes"
    if check != "token-node":
        assert any(broken.evaluate(c.review()).allowed for c in DENIED), check


def test_variables_only_use_earlier_variables(policy: Policy) -> None:
    """The API server compiles each variable with only the earlier ones in scope."""
    names = [name for name, _ in policy.variables]
    for i, v in enumerate(policy.spec["variables"]):
        used = set(re.findall(r"variables\.(\w+)", v["expression"]))
        assert used <= set(names[:i]), (v["name"], used - set(names[:i]))
