"""The driver's watch of the cluster's head (orchestrator/cluster/watch.py), against a real gRPC server that speaks
the GCS's GetClusterId the way Ray's GCS does. The whole fault -- a head node SIGKILLed under a running study, one
line, exit 3, resume on a new cluster -- is tests/test_cluster_hosts.py::test_head_node_lost_..."""
import threading
import time
from concurrent import futures

import grpc
import pytest

from orchestrator.cluster.watch import HeadWatch, lost_after_s
from orchestrator.errors import UserError


class _Gcs:
    """A GCS stand-in: answers GetClusterId, or refuses every call as unauthenticated (``refuse``)."""

    def __init__(self, refuse: bool = False):
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        outer = self

        class Servicer(gcs_service_pb2_grpc.NodeInfoGcsServiceServicer):
            def GetClusterId(self, request, context):
                outer.calls += 1
                if refuse:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
                return gcs_service_pb2.GetClusterIdReply()

        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        gcs_service_pb2_grpc.add_NodeInfoGcsServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait()


def _watch(address, lost_after):
    lost = []
    event = threading.Event()

    def on_lost(seconds):
        lost.append((seconds, time.monotonic()))
        event.set()

    return HeadWatch(address, None, on_lost, lost_after=lost_after, poll=0.2).start(), lost, event


@pytest.mark.parametrize("refuse", [False, True], ids=["answers", "refuses-the-token"])
def test_a_gcs_that_answers_is_never_lost_and_a_gone_one_is_within_the_limit(refuse):
    gcs = _Gcs(refuse=refuse)
    watch, lost, event = _watch(gcs.address, lost_after=1.5)
    try:
        time.sleep(2.5)  # longer than the limit: a GCS that answers (even "unauthenticated") is alive
        assert lost == [] and gcs.calls >= 5
        gone = time.monotonic()
        gcs.stop()
        assert event.wait(10), "the watch never noticed the GCS was gone"
        seconds, at = lost[0]
        assert 1.5 <= seconds and at - gone < 1.5 + 2.5  # the limit, plus one poll and one RPC timeout at most
        time.sleep(0.6)
        assert len(lost) == 1  # once
    finally:
        watch.stop()
        gcs.stop()


def test_a_stopped_watch_never_fires_and_zero_turns_it_off():
    gcs = _Gcs()
    watch, lost, _ = _watch(gcs.address, lost_after=0.5)
    watch.stop()
    gcs.stop()
    time.sleep(1.5)
    assert lost == []
    off, lost, _ = _watch(gcs.address, lost_after=0)
    assert off._thread is None
    time.sleep(0.5)
    assert lost == []


def test_the_limit_comes_from_our_variable_else_rays_reconnect_timeout(monkeypatch):
    monkeypatch.delenv("ADDER_SWEEP_HEAD_LOST_AFTER_S", raising=False)
    monkeypatch.delenv("RAY_gcs_rpc_server_reconnect_timeout_s", raising=False)
    assert lost_after_s() == 10
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "300")  # a cluster with GCS fault tolerance
    assert lost_after_s() == 300
    monkeypatch.setenv("ADDER_SWEEP_HEAD_LOST_AFTER_S", "0")
    assert lost_after_s() == 0
    monkeypatch.setenv("ADDER_SWEEP_HEAD_LOST_AFTER_S", "soon")
    with pytest.raises(UserError, match="ADDER_SWEEP_HEAD_LOST_AFTER_S='soon': not a number"):
        lost_after_s()
