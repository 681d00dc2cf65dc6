"""Pretrained weights: every tag has its own cache file, and the real download path (a loopback HTTP server serving
official-layout files at the cfgs' URL paths) caches only complete, hash-checked files."""
import http.server
import io
import os
import re
import threading
import urllib.parse
from collections import defaultdict

import pytest
import timm
import torch

from backbones._helpers import WEIGHTS_MIRROR_ENV, WeightsDownloadError, pretrained_file_name
from conftest import ALL_MODELS


def test_every_pretrained_url_has_its_own_cache_file():
    urls_by_file = defaultdict(set)
    for name in ALL_MODELS:
        for tag in timm.list_pretrained(f'{name}.*'):
            url = timm.models.get_pretrained_cfg(tag).url
            if url:
                urls_by_file[pretrained_file_name(url)].add(url[0] if isinstance(url, (tuple, list)) else url)
    shared = {f: sorted(u) for f, u in urls_by_file.items() if len(u) > 1}
    assert urls_by_file and not shared, f'different URLs cached under one file name: {shared}'


class _Server:
    """Serves `files` {url path: bytes} on 127.0.0.1; paths in `truncate` get a full Content-Length, half a body."""

    def __init__(self):
        self.files, self.truncate, self.hits = {}, set(), defaultdict(int)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                server.hits[path] += 1
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if path in server.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True)
        self.thread.start()
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    server = _Server()
    monkeypatch.setenv(WEIGHTS_MIRROR_ENV, server.url)
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    try:
        yield server
    finally:
        server.close()


# Ours -> the official models/biformer.py layout (the inverse of the family's checkpoint filter).
_TO_OFFICIAL_BIFORMER = (
    (r'^stem\.conv1\.', 'downsample_layers.0.0.'), (r'^stem\.norm1\.', 'downsample_layers.0.1.'),
    (r'^stem\.conv2\.', 'downsample_layers.0.3.'), (r'^stem\.norm2\.', 'downsample_layers.0.4.'),
    (r'^stages\.(\d)\.downsample\.conv\.', r'downsample_layers.\1.0.'),
    (r'^stages\.(\d)\.downsample\.norm\.', r'downsample_layers.\1.1.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.'), (r'\.attn\.qkv\.', '.attn.qkv.qkv.'),
    (r'\.attn\.proj\.', '.attn.wo.'), (r'\.mlp\.fc1\.', '.mlp.0.'), (r'\.mlp\.fc2\.', '.mlp.3.'), (r'^head\.fc\.', 'head.'),
)


def _official_biformer_file(name: str):
    torch.manual_seed(hash(name) % 1000)
    source = timm.create_model(name)
    official = {}
    for key, value in source.state_dict().items():
        for pattern, replacement in _TO_OFFICIAL_BIFORMER:
            key = re.sub(pattern, replacement, key)
        official[key] = value
    buffer = io.BytesIO()
    torch.save({'model': official, 'epoch': 300}, buffer)
    url = timm.models.get_pretrained_cfg(f'{name}.in1k').url
    return source.state_dict(), urllib.parse.urlparse(url[0]).path, buffer.getvalue()


def test_biformer_tags_download_their_own_files_once(mirror, tmp_path):
    expected = {}
    for name in ('biformer_tiny', 'biformer_small'):
        state_dict, path, body = _official_biformer_file(name)
        assert path.endswith('/root/content')
        mirror.files[path] = body
        expected[name] = (state_dict, path)
    for _ in range(2):  # the second round reads the cache
        for name, (state_dict, path) in expected.items():
            model = timm.create_model(name, pretrained=True)
            loaded = model.state_dict()
            assert all(torch.equal(loaded[k], v) for k, v in state_dict.items()), f'{name} loaded other weights'
            assert 'state_dict' not in model.pretrained_cfg
    assert {mirror.hits[p] for _, p in expected.values()} == {1}
    assert sorted(os.listdir(tmp_path / 'hub' / 'checkpoints')) == ['biformer_small.in1k.pth', 'biformer_tiny.in1k.pth']


def test_truncated_download_is_one_clear_error_and_caches_nothing(mirror, tmp_path):
    _, path, body = _official_biformer_file('biformer_tiny')
    mirror.files[path] = body
    mirror.truncate.add(path)
    with pytest.raises(WeightsDownloadError, match=r'truncated: received \d+ of \d+ bytes; nothing was cached'):
        timm.create_model('biformer_tiny', pretrained=True)
    assert os.listdir(tmp_path / 'hub' / 'checkpoints') == []
    mirror.truncate.clear()  # the next try downloads again and loads
    timm.create_model('biformer_tiny', pretrained=True)
    assert mirror.hits[path] == 2


def test_published_hash_is_checked(mirror, tmp_path):
    url = timm.models.get_pretrained_cfg('asvit_deit_tiny.deit_in1k').url
    assert re.search(r'-[0-9a-f]{8}\.pth$', url)  # DeiT publishes a sha256 prefix in the file name
    buffer = io.BytesIO()
    torch.save({'model': timm.create_model('asvit_deit_tiny').state_dict()}, buffer)
    mirror.files[urllib.parse.urlparse(url).path] = buffer.getvalue()
    with pytest.raises(WeightsDownloadError, match='not the published a1311bcf'):
        timm.create_model('asvit_deit_tiny', pretrained=True)
    assert os.listdir(tmp_path / 'hub' / 'checkpoints') == []
