"""The Files API over HTTP with the official SDK, and ``stepfile://`` in chat (fake engine)."""

from __future__ import annotations

import base64
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_fake_server
from tests.fakes import FakeEngine
from tests.storage.samples import VIDEOS, animated, image, video
from vlmserve.settings import Settings

MODEL = "step-1o-turbo-vision"
KEYS = tuple(f"key-{i}" for i in range(100))  # one fresh account per test
OTHER_KEYS = ("other-1", "other-2")  # accounts a test shares a file with, never fresh
MAX_FILES = 3
MAX_UPLOAD = 256 * 1024
PNG = image("PNG")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlmserve-data")


@pytest.fixture(scope="module")
def files_server(data_dir: Path) -> Iterator[LiveServer]:
    settings = Settings(
        server={"api_keys": KEYS + OTHER_KEYS},
        media={"allow_loopback": True},
        storage={
            "data_dir": data_dir,
            "max_files_per_owner": MAX_FILES,
            "max_upload_bytes": MAX_UPLOAD,
        },
    )
    server, live = start_fake_server(settings, FakeEngine())
    with server:
        yield live


_unused_keys = itertools.count()


@pytest.fixture
def key() -> str:
    """A fresh account for each test: tests do not see each other's files or limits."""
    return KEYS[next(_unused_keys)]


def sdk(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key=key, max_retries=0)


def raw(server: LiveServer, key: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def assert_error(resp: httpx.Response, status: int, param: str | None, code: str) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert (err["param"], err["code"]) == (param, code)
    return str(err["message"])


def upload(client: httpx.Client, data: bytes, name: str = "a.png", **fields: str) -> httpx.Response:
    form = {"purpose": "storage", **fields}
    return client.post("/v1/files", data=form, files={"file": (name, data, "text/plain")})


def ask(image_url: str) -> list[dict[str, object]]:
    image_part = {"type": "image_url", "image_url": {"url": image_url}}
    return [{"role": "user", "content": [image_part, {"type": "text", "text": "what is it"}]}]


def test_sdk_create_list_retrieve_content_delete(files_server: LiveServer, key: str) -> None:
    client = sdk(files_server, key)
    created = client.files.create(file=("red.png", PNG), purpose="storage")  # type: ignore[arg-type]
    assert created.id.startswith("file-")
    assert (created.bytes, created.filename, created.status) == (len(PNG), "red.png", "processed")
    assert created.purpose == "storage"  # type: ignore[comparison-overlap]
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == PNG
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    assert list(client.files.list()) == []
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_file_object_and_list_have_steps_shape(files_server: LiveServer, key: str) -> None:
    with raw(files_server, key) as client:
        body = upload(client, PNG).json()
        assert set(body) == {"id", "object", "bytes", "created_at", "filename", "purpose", "status"}
        assert (body["object"], body["purpose"], body["status"]) == ("file", "storage", "processed")
        listing = client.get("/v1/files").json()
        assert listing["object"] == "list" and listing["data"] == [body]
        assert client.delete(f"/v1/files/{body['id']}").json() == {
            "id": body["id"],
            "object": "file",
            "deleted": True,
        }


def test_content_is_served_with_the_sniffed_type_not_the_declared_one(
    files_server: LiveServer, key: str
) -> None:
    jpeg = image("JPEG")
    with raw(files_server, key) as client:
        file_id = upload(client, jpeg, name="photo.txt").json()["id"]  # declared text/plain
        resp = client.get(f"/v1/files/{file_id}/content")
    assert resp.status_code == 200 and resp.content == jpeg
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("kind", sorted(VIDEOS))
def test_videos_are_stored_with_their_container_type(
    files_server: LiveServer, kind: str, key: str
) -> None:
    data = video(kind)
    with raw(files_server, key) as client:
        file_id = upload(client, data, name=f"clip.{kind.lower()}").json()["id"]
        resp = client.get(f"/v1/files/{file_id}/content")
    assert resp.content == data and resp.headers["content-type"] == VIDEOS[kind][2]


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("get", "/content"), ("delete", "")])
def test_unknown_file_id_is_404_with_the_error_envelope(
    files_server: LiveServer, key: str, method: str, suffix: str
) -> None:
    with raw(files_server, key) as client:
        resp = client.request(method, f"/v1/files/file-nope{suffix}")
    assert "file-nope" in assert_error(resp, 404, "file_id", "file_not_found")


@pytest.mark.parametrize("purpose", ["assistants", "file-extract", "", None])
def test_purpose_other_than_storage_is_400_naming_purpose(
    files_server: LiveServer, key: str, purpose: str | None
) -> None:
    form = {} if purpose is None else {"purpose": purpose}
    with raw(files_server, key) as client:
        resp = client.post("/v1/files", data=form, files={"file": ("a.png", PNG)})
        assert "purpose" in assert_error(resp, 400, "purpose", "request_params_invalid")
        assert client.get("/v1/files").json()["data"] == []


def test_upload_over_the_size_limit_is_413_and_keeps_nothing(
    files_server: LiveServer, key: str, data_dir: Path
) -> None:
    too_big = image("JPEG") + b"\x00" * MAX_UPLOAD
    with raw(files_server, key) as client:
        message = assert_error(upload(client, too_big), 413, "file", "payload_too_large")
        assert "0.25 MB" in message
        assert client.get("/v1/files").json()["data"] == []
    assert list((data_dir / "files" / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("data", "found", "hint"),
    [
        (b"%PDF-1.4\n", "a PDF document", "MP4"),
        (b"", "empty", "MP4"),
        (b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom", "MPEG-4 audio", "MP4"),
        (animated("GIF"), "an animated GIF", "still images"),
    ],
)
def test_unsupported_content_is_400_naming_what_was_found(
    files_server: LiveServer, key: str, data: bytes, found: str, hint: str
) -> None:
    with raw(files_server, key) as client:
        message = assert_error(upload(client, data), 400, "file", "unsupported_content_type")
        assert found in message and hint in message  # what it is, and what is accepted
        assert client.get("/v1/files").json()["data"] == []


def test_neither_file_nor_url_is_400(files_server: LiveServer, key: str) -> None:
    with raw(files_server, key) as client:
        resp = client.post("/v1/files", data={"purpose": "storage"})
    assert "url" in assert_error(resp, 400, "file", "request_params_invalid")


def test_file_count_limit_per_owner_is_400_until_a_file_is_deleted(
    files_server: LiveServer, key: str
) -> None:
    client = sdk(files_server, key)
    created = [
        client.files.create(file=(f"{i}.png", image(color=c)), purpose="storage")  # type: ignore[arg-type]
        for i, c in enumerate(("red", "green", "blue"))
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("x.png", PNG), purpose="storage")  # type: ignore[arg-type]
    assert caught.value.code == "too_many_files" and "Delete" in caught.value.message
    sdk(files_server, OTHER_KEYS[0]).files.create(file=("x.png", PNG), purpose="storage")  # type: ignore[arg-type]
    client.files.delete(created[0].id)
    client.files.create(file=("x.png", PNG), purpose="storage")  # type: ignore[arg-type]


def test_sdk_list_pages_through_every_file(files_server: LiveServer, key: str) -> None:
    client = sdk(files_server, key)
    ids = [
        client.files.create(file=(f"{c}.png", image(color=c)), purpose="storage").id  # type: ignore[arg-type]
        for c in ("red", "green", "blue")
    ]
    assert [f.id for f in client.files.list(limit=1)] == ids[::-1]  # three pages, newest first
    assert [f.id for f in client.files.list(order="asc")] == ids


def test_owners_cannot_see_read_delete_or_chat_with_each_others_files(
    files_server: LiveServer, key: str
) -> None:
    owner, other = sdk(files_server, key), sdk(files_server, OTHER_KEYS[1])
    created = owner.files.create(file=("mine.png", PNG), purpose="storage")  # type: ignore[arg-type]
    assert created.id not in [f.id for f in other.files.list()]
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    with pytest.raises(openai.BadRequestError) as caught:
        other.chat.completions.create(model=MODEL, messages=ask(f"stepfile://{created.id}"))  # type: ignore[arg-type]
    assert caught.value.code == "file_not_found"
    assert owner.files.retrieve(created.id) == created


def test_chat_with_a_stepfile_image_gives_the_engine_one_image(
    files_server: LiveServer, key: str
) -> None:
    client = sdk(files_server, key)
    created = client.files.create(file=("red.png", PNG), purpose="storage")  # type: ignore[arg-type]
    reply = client.chat.completions.create(model=MODEL, messages=ask(f"stepfile://{created.id}"))  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "echo: what is it"
    media = files_server.engine.requests[-1].prompt.media
    assert len(media) == 1 and media[0].kind == "image"
    # The same intake as a data URL: the same picture has the same identity.
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client.chat.completions.create(model=MODEL, messages=ask(data_url))  # type: ignore[arg-type]
    assert files_server.engine.requests[-1].prompt.media[0].identity == media[0].identity


def test_chat_with_an_unknown_or_deleted_stepfile_is_400_naming_the_part(
    files_server: LiveServer, key: str
) -> None:
    client = sdk(files_server, key)
    created = client.files.create(file=("red.png", PNG), purpose="storage")  # type: ignore[arg-type]
    client.files.delete(created.id)
    for file_id in ("file-unknown", created.id):
        with raw(files_server, key) as http:
            payload = {"model": MODEL, "messages": ask(f"stepfile://{file_id}")}
            resp = http.post("/v1/chat/completions", json=payload)
        message = assert_error(resp, 400, "messages[0].content[0].image_url.url", "file_not_found")
        assert file_id in message


def test_stepfile_video_in_an_image_part_is_refused_by_image_intake(
    files_server: LiveServer, key: str
) -> None:
    client = sdk(files_server, key)
    created = client.files.create(file=("clip.mp4", video("MP4")), purpose="storage")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ask(f"stepfile://{created.id}"))  # type: ignore[arg-type]
    assert caught.value.code == "unsupported_content_type"


ROUTES = {"/pics/red%20dot.png": PNG, "/notes.pdf": b"%PDF-1.4\n"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ROUTES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_upload_by_url_is_fetched_sniffed_and_named(
    files_server: LiveServer, key: str, origin: str
) -> None:
    with raw(files_server, key) as client:
        form = {"purpose": "storage", "url": origin + "/pics/red%20dot.png"}
        body = client.post("/v1/files", data=form).json()
        assert (body["filename"], body["bytes"]) == ("red dot.png", len(PNG))
        assert client.get(f"/v1/files/{body['id']}/content").content == PNG


@pytest.mark.parametrize(
    ("path", "code"),
    [("/missing.png", "media_fetch_failed"), ("/notes.pdf", "unsupported_content_type")],
)
def test_upload_by_url_failure_is_400_naming_url(
    files_server: LiveServer, key: str, origin: str, path: str, code: str
) -> None:
    with raw(files_server, key) as client:
        resp = client.post("/v1/files", data={"purpose": "storage", "url": origin + path})
        assert_error(resp, 400, "url", code)
        assert client.get("/v1/files").json()["data"] == []
