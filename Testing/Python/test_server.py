"""``vista3d serve`` for real: uvicorn on 127.0.0.1 in this process, a small network of VISTA3D's
design, and the client (``remote``) and the command line against it, compared with the local engine."""

from __future__ import annotations

import json
import socket
import stat
import threading
from dataclasses import replace

import numpy as np
import pytest
import requests

pytest.importorskip("fastapi", reason="the server extra is not installed (pip install 'vista3dslicer[server]')")
uvicorn = pytest.importorskip("uvicorn")

from VISTA3DSlicerLib import wire  # noqa: E402
from VISTA3DSlicerLib.cli import main  # noqa: E402
from VISTA3DSlicerLib.engine import Engine  # noqa: E402
from VISTA3DSlicerLib.errors import VISTA3DError  # noqa: E402
from VISTA3DSlicerLib.io import read_image  # noqa: E402
from VISTA3DSlicerLib.remote import RemoteEngine  # noqa: E402
from VISTA3DSlicerLib.server import ServerLimits, Users, create_app, new_users_file  # noqa: E402
from conftest import RunningServer  # noqa: E402

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh"
LIMITS = ServerLimits(max_upload_mb=2.0, max_sessions_per_user=3, idle_timeout_s=600.0)


class Clock:
    """The server's idea of time, moved on by the tests (session expiry)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def engine(small_network):
    return Engine(small_network)


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("server") / "users.txt"
    path.write_text(f"# who may use the server\nalice {ALICE}\nbob {BOB}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def server(engine, users_file, clock, small_sam):
    import torch

    app = create_app(engine, Users(users_file), LIMITS, weights_sha256="0" * 64, clock=clock,
                     sam=lambda: (small_sam, torch.device("cpu")))
    running = RunningServer(app)
    running.sessions = app.state.sessions
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def no_sessions_left(request):
    """Each test starts with no session on the module's server (the per-user limit is tested)."""
    yield
    if "server" in request.fixturenames:
        store = request.getfixturevalue("server").sessions
        for session in list(store._sessions.values()):
            store.close(session.id, session.owner)


@pytest.fixture
def ct(example_ct_crop):
    return read_image(example_ct_crop)


def get(server, path, token=None, **kwargs):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.get(server.url + path, headers=headers, timeout=30, **kwargs)


def post(server, path, token=ALICE, **kwargs):
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return requests.post(server.url + path, headers=headers, timeout=120, **kwargs)


def upload(server, image, token=ALICE):
    return post(server, "/v1/sessions", token, data=wire.compress(image.array),
                headers={wire.ARRAY_HEADER: wire.volume_header(image.array, image.affine)})


# ------------------------------------------------------------------------------ access


def test_health_needs_no_token_and_says_nothing_else(server):
    reply = get(server, "/health")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


@pytest.mark.parametrize("token", [None, "not-a-token-of-this-server", ALICE[:-1]])
def test_a_request_without_or_with_a_wrong_token_is_refused(server, token, ct):
    before = len(server.sessions)
    assert get(server, "/v1/info", token).status_code == 401
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    reply = requests.post(server.url + "/v1/sessions", data=wire.compress(ct.array), timeout=30,
                          headers={**headers, wire.ARRAY_HEADER: wire.volume_header(ct.array, ct.affine)})
    assert reply.status_code == 401 and "token" in reply.json()["detail"]
    assert len(server.sessions) == before  # nothing was made


def test_another_user_cannot_read_or_click_in_a_session(server, ct):
    session = upload(server, ct).json()["session"]
    for path in ("/segment", "/structures"):
        reply = post(server, f"/v1/sessions/{session}{path}", BOB, json={"labels": [1]})
        assert reply.status_code == 403 and "another user" in reply.json()["detail"]
    assert requests.delete(f"{server.url}/v1/sessions/{session}", headers={"Authorization": f"Bearer {BOB}"},
                           timeout=30).status_code == 403
    assert post(server, f"/v1/sessions/{session}/segment", ALICE, json={"labels": [1]}).status_code == 200


def test_a_revoked_user_is_refused_from_the_next_request(tmp_path, engine, ct):
    users = tmp_path / "users.txt"
    users.write_text(f"alice {ALICE}\nbob {BOB}\n", encoding="utf-8")
    running = RunningServer(create_app(engine, Users(users), LIMITS))
    try:
        assert get(running, "/v1/info", BOB).json()["user"] == "bob"
        users.write_text(f"alice {ALICE}\n", encoding="utf-8")  # the operator removes bob
        assert get(running, "/v1/info", BOB).status_code == 401
        assert get(running, "/v1/info", ALICE).status_code == 200
    finally:
        running.stop()


def test_a_generated_token_file_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "config" / "users.txt"
    token = new_users_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Users(path).who(token) == "default" and Users(path).who(token + "x") is None


# ------------------------------------------------------------------------------ same results as here


def test_remote_automatic_segmentation_is_the_local_one(server, engine, ct):
    remote = RemoteEngine(server.url, ALICE)
    assert remote.model.key == "vista3d" and remote.info["weights_sha256"] == "0" * 64
    ours = remote.segment(ct, [1, 3, 5, 6])
    np.testing.assert_array_equal(ours.array, engine.segment(ct, [1, 3, 5, 6]).array)
    assert ours.array.dtype == np.uint8 and np.array_equal(ours.affine, ct.affine)


def test_the_cli_with_a_server_writes_what_it_writes_here(server, tmp_path, example_ct_crop, small_checkpoint, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("VISTA3D_SERVER_TOKEN", ALICE)
    here, there = tmp_path / "here.nii.gz", tmp_path / "there.nii.gz"
    assert main(["segment", str(example_ct_crop), "-o", str(here), "--labels", "liver,spleen", "--weights",
                 str(small_checkpoint), "--device", "cpu"]) == 0
    assert main(["segment", str(example_ct_crop), "-o", str(there), "--labels", "liver,spleen",
                 "--server", server.url]) == 0
    assert "on cpu on " + server.url in capsys.readouterr().err
    np.testing.assert_array_equal(read_image(here).array, read_image(there).array)


@pytest.mark.parametrize("label, mask", [
    (1, None),  # a class: its automatic result, corrected
    (140, "empty"),  # a zero-shot ID
    (None, "empty"),  # clicks alone
])
def test_each_click_kind_undo_and_redo_are_the_local_ones(server, engine, ct, label, mask):
    start = None if mask is None else np.zeros(ct.shape, dtype=bool)
    local = engine.session(ct).structure(label, start)
    remote_session = RemoteEngine(server.url, ALICE).session(ct)
    remote = remote_session.structure(label, start)
    np.testing.assert_array_equal(remote.mask, local.mask)
    steps = [[((35, 30, 15), True)], [((40, 36, 15), False), ((30, 28, 14), True)]]
    for clicks in steps:
        expected, got = local.add_clicks(clicks), remote.add_clicks(clicks)
        np.testing.assert_array_equal(got.mask, expected.mask)
        assert (got.changed, remote.clicks) == (expected.changed, local.clicks)
        assert expected.changed is not None
    for step in ("undo", "undo", "redo"):
        expected, got = getattr(local, step)(), getattr(remote, step)()
        np.testing.assert_array_equal(got.mask, expected.mask)
        assert (remote.can_undo, remote.can_redo) == (local.can_undo, local.can_redo)
    # Each reply was the box that changed (``got.changed`` is the reply's box), not the volume.
    remote_session.close()


def test_two_users_clicking_at_once_each_get_their_own_result(server, engine, ct):
    clicks = {"alice": [((35, 30, 15), True)], "bob": [((20, 40, 10), True)]}
    expected = {who: engine.session(ct).structure(None, np.zeros(ct.shape, bool)).add_clicks(c).mask
                for who, c in clicks.items()}
    structures = {who: RemoteEngine(server.url, token).session(ct).structure(None, np.zeros(ct.shape, bool))
                  for who, token in (("alice", ALICE), ("bob", BOB))}
    results: dict = {}

    def click(who):
        results[who] = structures[who].add_clicks(clicks[who]).mask

    threads = [threading.Thread(target=click, args=(who,)) for who in clicks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for who in clicks:
        np.testing.assert_array_equal(results[who], expected[who])
    assert not np.array_equal(results["alice"], results["bob"])


def test_an_expired_session_is_opened_again_by_the_client(server, engine, ct, clock):
    remote = RemoteEngine(server.url, ALICE).session(ct)
    structure = remote.structure(None, np.zeros(ct.shape, bool))
    first = structure.add_clicks([((35, 30, 15), True)]).mask
    old_id = remote.id
    clock.now += LIMITS.idle_timeout_s + 1  # the session expires on the server
    assert post(server, f"/v1/sessions/{old_id}/segment", json={"labels": [1]}).status_code == 410
    again = structure.add_clicks([((30, 28, 14), True)])  # nothing for the user to do
    assert remote.id != old_id
    local = engine.session(ct).structure(None, np.zeros(ct.shape, bool))
    local.add_clicks([((35, 30, 15), True)])
    np.testing.assert_array_equal(again.mask, local.add_clicks([((30, 28, 14), True)]).mask)
    assert first.any()


# ------------------------------------------------------------------------------ progress, cancel


def test_the_progress_of_a_server_computation_reaches_the_caller_on_its_thread(server, engine, ct, monkeypatch):
    from VISTA3DSlicerLib import remote

    monkeypatch.setattr(remote, "POLL_SECONDS", 0.05)
    reports = []
    labels = RemoteEngine(server.url, ALICE).segment(
        ct, [1, 3], progress=lambda done, total, message: reports.append((done, total, message, threading.get_ident())))
    np.testing.assert_array_equal(labels.array, engine.segment(ct, [1, 3]).array)
    assert any(total > 1 and "indow" in message for _done, total, message, _thread in reports), reports  # the windows
    assert {thread for *_, thread in reports} == {threading.get_ident()}


def test_cancel_stops_a_server_computation_and_the_server_goes_on(server, ct, monkeypatch):
    from VISTA3DSlicerLib import remote
    from VISTA3DSlicerLib.errors import Cancelled
    from VISTA3DSlicerLib.progress import CancelToken

    monkeypatch.setattr(remote, "POLL_SECONDS", 0.05)
    remote_engine, token = RemoteEngine(server.url, ALICE), CancelToken()
    session = remote_engine.session(ct)
    with pytest.raises(Cancelled):  # cancelled at the first news of the server's work
        session.segment([1, 3], progress=lambda *report: token.cancel(), cancel=token)
    state = get(server, f"/v1/sessions/{session.id}/progress", ALICE).json()
    assert state["running"] == 0  # nothing left running or queued for it
    assert session.segment([1]).array.any()  # the same session serves the next request
    other = get(server, f"/v1/sessions/{session.id}/progress", BOB)
    assert other.status_code == 403  # another user's session: not even its progress


# ------------------------------------------------------------------------------ supervoxels


def test_supervoxels_made_by_the_server_are_the_local_ones(server, ct, small_sam):
    from VISTA3DSlicerLib.supervoxels import compute_supervoxels

    roi = (slice(10, 50), slice(10, 40), slice(5, 20))
    session = RemoteEngine(server.url, ALICE).session(ct)
    remote = session.supervoxels(roi, n_segments=30)
    local = compute_supervoxels(small_sam, ct, roi, n_segments=30)
    np.testing.assert_array_equal(remote.array, local.array)
    assert remote.array[roi].max() > 5 and np.array_equal(remote.affine, ct.affine)
    box_bytes = session.exchanges[-1].received
    assert session.exchanges[-1].what == "supervoxels" and box_bytes < local.array[roi].nbytes  # the ROI, compressed
    whole = session.supervoxels(None, n_segments=20)
    np.testing.assert_array_equal(whole.array, compute_supervoxels(small_sam, ct, None, n_segments=20).array)


def test_zeroshot_snapped_on_a_server_is_the_local_one(server, tmp_path, example_ct_crop, small_checkpoint, small_sam,
                                                       monkeypatch):
    import torch

    from VISTA3DSlicerLib import cli

    monkeypatch.setenv("VISTA3D_SERVER_TOKEN", ALICE)
    monkeypatch.setattr(cli, "_sam", lambda args: (small_sam, torch.device("cpu")))  # here: the test SAM
    clicks = ["--point", "35,30,15", "--negative-point", "12,25,14", "--snap", "0.5", "--n-segments", "40"]
    here, there = tmp_path / "here.nii.gz", tmp_path / "there.nii.gz"
    assert main(["zeroshot", str(example_ct_crop), "-o", str(here), *clicks, "--weights", str(small_checkpoint),
                 "--device", "cpu"]) == 0
    monkeypatch.setattr(cli, "_sam", None)  # on a server nothing of SAM is loaded here
    assert main(["zeroshot", str(example_ct_crop), "-o", str(there), *clicks, "--server", server.url]) == 0
    snapped = read_image(there).array
    np.testing.assert_array_equal(read_image(here).array, snapped)
    assert set(np.unique(snapped)) == {0, 133}


def test_a_server_without_sam_says_so_and_bad_supervoxel_requests_are_refused(server, engine, users_file, ct):
    session = upload(server, ct).json()["session"]
    for body, says in [({"n_segments": 0}, "n_segments must be a whole number from 1 to 5000"),
                       ({"n_segments": "many"}, "n_segments must be a whole number"),
                       ({"box": {"start": [0, 0, 0], "shape": [500, 1, 1]}}, "does not fit the volume")]:
        reply = post(server, f"/v1/sessions/{session}/supervoxels", json=body)
        assert reply.status_code == 400 and says in reply.json()["detail"], reply.text
    without = RunningServer(create_app(engine, Users(users_file), LIMITS))
    try:
        remote = RemoteEngine(without.url, ALICE)
        assert remote.info["supervoxels"] is False
        with pytest.raises(VISTA3DError, match="This server makes no supervoxels.*--sam-weights"):
            remote.session(ct).supervoxels(None)
        session = upload(without, ct).json()["session"]
        reply = post(without, f"/v1/sessions/{session}/supervoxels", json={})
        assert reply.status_code == 400 and "no SAM checkpoint" in reply.json()["detail"]
        remote.close()
    finally:
        without.stop()


# ------------------------------------------------------------------------------ bad requests


def test_bad_requests_get_one_clear_error_each_and_the_server_goes_on(server, ct):
    session = upload(server, ct).json()["session"]
    cases = [
        (post(server, "/v1/sessions", data=b"x" * 3_000_000,
              headers={wire.ARRAY_HEADER: wire.volume_header(ct.array, ct.affine)}), 413, "more than this server's 2 MB"),
        (post(server, "/v1/sessions", data=wire.compress(ct.array)), 400, "has no X-VISTA3D-Array header"),
        (post(server, "/v1/sessions", data=b"not zstd",
              headers={wire.ARRAY_HEADER: wire.volume_header(ct.array, ct.affine)}), 400, "not a Zstandard frame"),
        (post(server, "/v1/sessions", data=wire.compress(ct.array[:-1]),
              headers={wire.ARRAY_HEADER: wire.volume_header(ct.array, ct.affine)}), 400,
         "the bytes do not match the declared shape"),
        (post(server, "/v1/sessions", data=wire.compress(ct.array),
              headers={wire.ARRAY_HEADER: '{"shape": [1, 2]}'}), 400, "must be JSON with shape, dtype and affine"),
        (post(server, f"/v1/sessions/{session}/segment", json={"labels": "livr"}), 400, 'Unknown label "livr"'),
        (post(server, f"/v1/sessions/{session}/segment", data=b"{not json"), 400, "must be JSON"),
    ]
    structure = post(server, f"/v1/sessions/{session}/structures",
                     headers={wire.ARRAY_HEADER: '{"label": null, "box": null}'})
    assert structure.status_code == 200, structure.text
    structure_id = json.loads(structure.headers[wire.REPLY_HEADER])["structure"]
    cases += [
        (post(server, f"/v1/sessions/{session}/structures/{structure_id}/clicks",
              json={"clicks": [[500, 1, 1, True]]}), 400, "outside the volume"),
        (post(server, f"/v1/sessions/{session}/structures/{structure_id}/clicks",
              json={"clicks": [[1, 1, 1, True]] * 101}), 400, "more than this server's 100"),
        (post(server, f"/v1/sessions/{session}/structures/{structure_id}/clicks", json={"clicks": "here"}), 400,
         "clicks must be a list"),
    ]
    for reply, status, says in cases:
        assert reply.status_code == status and says in reply.json()["detail"], (reply.status_code, reply.text)
        assert "Traceback" not in reply.text
    assert get(server, "/health").json() == {"status": "ok"}
    assert post(server, f"/v1/sessions/{session}/segment", json={"labels": [1]}).status_code == 200


def test_too_many_sessions_for_one_user_is_refused_with_the_reason(server, ct):
    for _ in range(LIMITS.max_sessions_per_user):
        assert upload(server, ct, BOB).status_code == 200
    reply = upload(server, ct, BOB)
    assert reply.status_code == 429 and "the most this server allows per user" in reply.json()["detail"]
    assert upload(server, ct, ALICE).status_code == 200  # another user is not held up


def test_a_server_gone_mid_request_is_one_clear_message(ct):
    """A server killed while it works: the connection drops before a reply."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def answer_info_then_die():
        info = json.dumps({"protocol": wire.PROTOCOL, "model": "vista3d", "device": "cuda:0", "precision": "fp32"})
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(info)}\r\n"
                           f"Connection: close\r\n\r\n{info}".encode())
        connection.close()
        connection, _ = listener.accept()
        connection.recv(1024)  # the upload starts; the server dies
        connection.close()
        listener.close()

    threading.Thread(target=answer_info_then_die, daemon=True).start()
    remote = RemoteEngine(f"http://127.0.0.1:{port}", ALICE)
    with pytest.raises(VISTA3DError, match="did not answer or stopped mid-request.*`vista3d serve` runs there"):
        remote.segment(ct, [1])


def test_versions_and_models_that_do_not_match_say_which_side_to_change(server, monkeypatch):
    with pytest.raises(VISTA3DError, match="The server runs vista3d, not nv-segment-ct"):
        RemoteEngine(server.url, ALICE, model="nv-segment-ct")
    from VISTA3DSlicerLib import remote

    monkeypatch.setattr(remote, "CLIENT_PROTOCOL", wire.PROTOCOL - 1)  # an older client
    with pytest.raises(VISTA3DError, match="update this client"):
        RemoteEngine(server.url, ALICE)
    monkeypatch.setattr(remote, "CLIENT_PROTOCOL", wire.PROTOCOL + 1)  # a newer client
    with pytest.raises(VISTA3DError, match="update the server"):
        RemoteEngine(server.url, ALICE)


def test_the_server_binds_to_this_computer_unless_told_otherwise():
    from VISTA3DSlicerLib.cli import _parser

    args = _parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8765)
    assert replace(LIMITS).max_clicks == 100


def test_the_benchmark_reports_bytes_and_round_trips_of_a_session(server, tmp_path, example_ct_crop, monkeypatch):
    import bench

    monkeypatch.setenv("VISTA3D_SERVER_TOKEN", ALICE)
    output = tmp_path / "BENCHMARKS.md"
    result = bench.run_server_benchmark(server.url, None, str(example_ct_crop), "liver", output)
    kinds = [exchange["what"] for exchange in result["exchanges"]]
    assert kinds == ["upload", "segment", "clicks", "clicks", "supervoxels"]
    upload, *_, click = result["exchanges"]
    assert upload["sent"] < read_image(example_ct_crop).array.nbytes  # compressed
    assert all(e["seconds"] >= e["server_seconds"] >= 0 for e in result["exchanges"])
    text = output.read_text(encoding="utf-8")
    assert "server round trips" in text and "click #2" in text and "overhead" in text


def test_vista3d_bench_with_a_server_prints_each_request_with_its_bytes(server, capsys, monkeypatch):
    monkeypatch.setenv("VISTA3D_SERVER_TOKEN", ALICE)
    assert main(["bench", "--server", server.url, "--labels", "liver,spleen"]) == 0
    printed = capsys.readouterr()
    out = printed.out.splitlines()
    assert [line.split(":")[0] for line in out] == [
        "upload (the volume, once)", "automatic segmentation (liver,spleen)", "click #1", "click #2",
        "supervoxels around the structure"]
    assert "volume 160x160x120 voxels, 12.3 MB raw" in printed.err  # the phantom
    click_reply = float(out[3].split("received ")[1].split(" kB")[0].replace(",", ""))
    assert 0 < click_reply < 160 * 160 * 120 / 1e3 / 10  # a click's reply is a box, not the volume's labels
    assert all("round trip" in line and "overhead" in line for line in out)
