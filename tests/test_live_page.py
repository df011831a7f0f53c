"""The Live tab's markup and client: placeholders before Start (never a broken-image icon), a
snapshot button, and a client that pauses while hidden and reconnects after an idle close."""

import re

import app
from sdxs_core import live_socket


def test_live_images_show_placeholders_before_start():
    images = re.findall(r"<img\b[^>]*>", app.LIVE_HTML)
    assert len(images) == 2
    for tag in images:
        assert re.search(r'src="data:image/svg\+xml,[^"]+"', tag), tag
    assert re.search(r'<video\b[^>]*poster="data:image/svg\+xml,', app.LIVE_HTML)
    assert re.search(r'<button id="live-save" disabled', app.LIVE_HTML)


def test_client_pauses_when_hidden_and_follows_idle_closes():
    js = live_socket.client_js()
    assert "visibilitychange" in js and "IntersectionObserver" in js
    assert str(live_socket.CLOSE_IDLE) in js  # an idle close is explained and retried like a busy server
    assert "#live-save" in js
