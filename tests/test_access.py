"""Shared-state changes (model, ControlNet, LoRA) only from this machine or a logged-in user:
driven through the real app with gradio_client, a remote client faked by a proxy header."""

import pytest

from sdxs_core import access


class FakeRequest:
    def __init__(self, host, headers=None, username=None):
        self.client = type("Client", (), {"host": host})()
        self.headers, self.username = headers or {}, username


@pytest.mark.parametrize("request_, allowed", [
    (FakeRequest("127.0.0.1"), True), (FakeRequest("::1"), True), (None, True),
    (FakeRequest("192.168.1.20"), False), (FakeRequest("203.0.113.9"), False),
    (FakeRequest("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}), False),  # a proxy / share tunnel
    (FakeRequest("203.0.113.9", username="admin"), True), (FakeRequest("not-an-ip"), False)])
def test_who_may_change_shared_state(request_, allowed):
    assert access.may_change_shared(request_) is allowed
    assert (access.refusal(request_, "switch the model") is None) is allowed


def test_only_named_admins_change_shared_state():
    """With --admin, a logged-in account that is not named is an ordinary user."""
    admins = frozenset({"ann"})
    ann, bob = FakeRequest("203.0.113.9", username="ann"), FakeRequest("203.0.113.9", username="bob")
    assert access.may_change_shared(ann, admins) and not access.may_change_shared(bob, admins)
    assert "'bob' is not one of this app's admins" in access.refusal(bob, "switch the model", admins)
    assert access.may_change_shared(FakeRequest("127.0.0.1", username="bob"), admins)  # this machine still is
    assert access.may_change_shared(bob)  # without --admin every account is


def test_admin_flag_parsing():
    auth = [("ann", "pw"), ("bob", "pw")]
    assert access.parse_admins(None, auth) is None
    assert access.parse_admins(["ann"], auth) == frozenset({"ann"})
    with pytest.raises(ValueError, match="--admin 'eve': not an account of --auth"):
        access.parse_admins(["eve"], auth)
    with pytest.raises(ValueError, match="none given"):
        access.parse_admins(["ann"], None)


def test_auth_flag_parsing():
    assert access.parse_auth(None) is None
    assert access.parse_auth(["ann:pw", "bob:a:b"]) == [("ann", "pw"), ("bob", "a:b")]
    with pytest.raises(ValueError, match="--auth: expected user:password"):
        access.parse_auth(["nopassword"])


@pytest.fixture(scope="module")
def served(tiny_app):
    return tiny_app


def test_a_remote_client_cannot_switch_what_everyone_uses(served):
    from gradio_client import Client

    hub, url = served
    before = (hub.model_key, hub.controlnet_key, hub.lora_key)
    assert hub.controlnet_key is not None
    remote = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.9"})
    for args, api in ((("none",), "/set_controlnet"), (("outputs/tiny-model",), "/load_model"),
                      (("none", 1.0), "/set_lora")):
        banner, *_ = remote.predict(*args, api_name=api)
        assert "Only the person running the app" in banner, api
    assert (hub.model_key, hub.controlnet_key, hub.lora_key) == before
    gallery, _ = remote.predict("a blue star", "none", 3, False, 1, api_name="/generate")  # its own choices: fine
    assert len(gallery) == 1

    local = Client(url, verbose=False)
    banner, *_ = local.predict("none", api_name="/set_controlnet")
    assert "detached" in banner and hub.controlnet_key is None
    banner, *_ = local.predict(before[1], api_name="/set_controlnet")
    assert hub.controlnet_key == before[1]


def test_an_oversized_frame_is_refused_by_name(served, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    _, url = served
    path = tmp_path / "wide.png"
    Image.new("RGB", (4100, 8)).save(path)
    _, _, readout, _ = Client(url, verbose=False).predict(handle_file(str(path)), "a", "canny", 1.0, 0,
                                                          api_name="/live_frame")
    assert "Frame: the image is 4100x8 px; at most 4096 px a side" in readout


def test_with_admin_named_only_that_account_switches_from_afar(tiny_hub):
    """``--auth ann:pw --auth bob:pw --admin ann``, both logged in from another machine: bob is refused
    by name and changes nothing; ann switches."""
    import socket

    from gradio_client import Client

    from app import build_demo

    hub = tiny_hub
    demo = build_demo(hub, admins=frozenset({"ann"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                auth=[("ann", "pw"), ("bob", "pw")])
    url, remote = f"http://127.0.0.1:{port}/", {"X-Forwarded-For": "203.0.113.9"}
    try:
        before = hub.controlnet_key
        assert before is not None
        bob = Client(url, auth=("bob", "pw"), verbose=False, headers=remote)
        banner, *_ = bob.predict("none", api_name="/set_controlnet")
        assert "'bob' is not one of this app's admins" in banner and hub.controlnet_key == before
        ann = Client(url, auth=("ann", "pw"), verbose=False, headers=remote)
        banner, *_ = ann.predict("none", api_name="/set_controlnet")
        assert "detached" in banner and hub.controlnet_key is None
        ann.predict(before, api_name="/set_controlnet")
        assert hub.controlnet_key == before
    finally:
        demo.close()
