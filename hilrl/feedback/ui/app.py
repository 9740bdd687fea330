"""The labelling page's server: pending queries as videos, labels into the run's preference store.

``hilrl label RUN_DIR`` serves it on 127.0.0.1 (off loopback only with a token, which every request
must carry as ``?token=`` or the ``X-Token`` header). Endpoints:

- ``GET /`` the page; ``GET /api/next?client=C&exclude=q1,q2`` the oldest pending query not shown to
  another client in the last ``lease_s`` seconds (several tabs or people get different queries),
  with its videos' URLs, the task in one line and the labelling criterion (what "better" means: the run's
  ``reward.kwargs.task_text`` / ``criterion``, written into each query), and the progress;
  ``GET /api/query/{id}`` one query;
- ``POST /api/label`` ``{"query", "label", "who", "order"}``; ``POST /api/undo`` ``{"who"}``;
- ``GET /video/{segment}.webm`` a segment's video (VP8), rendered from its MuJoCo states.

Labels go through :class:`~hilrl.feedback.preferences.store.PreferenceStore` (one lock, checked
inside it: a query is labelled once however many tabs send it). A bad request gets a 4xx with the
reason and changes nothing. A thread renders the next pending queries' videos ahead (``prefetch``),
so the page never waits on encoding.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hilrl.errors import HilrlError
from hilrl.feedback.preferences.source import DEFAULT_CRITERION, task_description
from hilrl.feedback.preferences.store import LabelRefused, PreferenceStore

STATIC = Path(__file__).resolve().parent / "static"
SEGMENT_ID = re.compile(r"s\d{6}")


class LabelIn(BaseModel):
    """``POST /api/label``'s body."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=16)
    who: str = Field("person", min_length=1, max_length=100)
    order: list[int] | None = None


class UndoIn(BaseModel):
    """``POST /api/undo``'s body."""

    model_config = ConfigDict(extra="forbid")
    who: str | None = Field(None, min_length=1, max_length=100)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class VideoCache:
    """Segment videos under ``RUN/preferences/videos/``, encoded once, ahead of need by a thread.

    :param store: the run's preference store.
    :param env_config: the run's env config (``None``: no videos, e.g. a real arm without states).
    :param size: frame size in pixels.
    :param prefetch: how many pending queries ahead to prepare.
    """

    def __init__(self, store: PreferenceStore, env_config: Any, size: int = 128, prefetch: int = 4) -> None:
        self.store, self.env_config, self.size, self.prefetch = store, env_config, size, prefetch
        self.folder = store.folder / "videos"
        self.folder.mkdir(exist_ok=True)
        self.render_thread = ThreadPoolExecutor(1, thread_name_prefix="render")
        self.renderer = None
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._ahead, daemon=True, name="video-prefetch")
        self.thread.start()

    def path(self, sid: str) -> Path | None:
        """The segment's video, encoding it now if needed; ``None`` when the segment has no states.

        Rendering runs on one thread (an EGL context belongs to the thread that made it)."""
        path = self.folder / f"{sid}.webm"
        if path.is_file():
            return path
        return self.render_thread.submit(self._encode, sid, path).result()

    def _encode(self, sid: str, path: Path) -> Path | None:
        if path.is_file():
            return path
        arrays = self.store.segment(sid)
        if "states" not in arrays or self.env_config is None:
            return None
        from hilrl.feedback.preferences.render import SegmentRenderer, write_webm

        if self.renderer is None:
            self.renderer = SegmentRenderer(self.env_config, self.size)
        return write_webm(self.renderer.frames(arrays["states"]), path)

    def has_video(self, sid: str) -> bool:
        return (self.folder / f"{sid}.webm").is_file() or "states" in self.store.segment(sid)

    def _ahead(self) -> None:
        while not self.stopped.is_set():
            try:
                for query in self.store.pending()[: self.prefetch]:
                    for sid in query["segments"]:
                        if self.stopped.is_set():
                            return
                        self.path(sid)
            except Exception:  # noqa: BLE001 - a bad segment must not stop the page; requests report it
                pass
            self.wake.wait(0.5)
            self.wake.clear()

    def close(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.thread.join(timeout=5)
        if self.renderer is not None:
            self.render_thread.submit(self.renderer.close).result()
        self.render_thread.shutdown()


def create_app(run_dir: str | Path, env_config: Any = None, token: str | None = None, lease_s: float = 120.0,
               prefetch: int = 4, video_size: int = 128) -> Any:
    """The FastAPI app of the labelling page for ``run_dir`` (module docstring).

    ``env_config``: the run's env section (:func:`hilrl.config.load_run_env`) to render segment videos with;
    ``None`` shows no videos (a real arm's run, or text pairs).
    """
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    run_dir = Path(run_dir)
    if not (run_dir / "preferences" / "queries.jsonl").is_file():
        raise HilrlError(f"{run_dir} has no preference queries yet ({run_dir}/preferences/queries.jsonl); train it "
                         "with reward: {source: preferences} (no teacher) until its first query session")
    store = PreferenceStore.for_run(run_dir)
    videos = VideoCache(store, env_config, video_size, prefetch)
    leases: dict[str, tuple[str, float]] = {}
    leases_lock = threading.Lock()
    app = FastAPI(title="hilrl labelling")
    app.state.videos = videos

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is not None and token not in (request.query_params.get("token"), request.headers.get("x-token")):
            return JSONResponse({"detail": "missing or wrong token: open the URL `hilrl label` printed "
                                           "(it carries ?token=...)"}, status_code=401)
        return await call_next(request)

    default_task = task_description(getattr(env_config, "id", None))

    def describe(query: dict[str, Any]) -> dict[str, Any]:
        if query.get("texts"):  # a text pair or ranking (hilrl align): answers as text, the prompt above them
            items = [{"segment": sid, "video": None, "text": str(text)}
                     for sid, text in zip(query["segments"], query["texts"])]
            prompt = query.get("prompt", "")
            if isinstance(prompt, list):  # chat messages
                prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt if isinstance(m, dict))
            return {"id": query["id"], "kind": query["kind"], "items": items, "prompt": str(prompt)}
        items = [{"segment": sid, "video": f"/video/{sid}.webm" if videos.has_video(sid) else None}
                 for sid in query["segments"]]
        # queries written before they carried their text get the run's task and the default criterion
        return {"id": query["id"], "kind": query["kind"], "items": items,
                "task": str(query.get("task") or default_task), "criterion": str(query.get("criterion")
                                                                              or DEFAULT_CRITERION)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/api/progress")
    def progress() -> dict[str, Any]:
        return store.progress()

    @app.get("/api/next")
    def next_query(client: str = "anonymous", exclude: str = "") -> dict[str, Any]:
        skip = {q for q in exclude.split(",") if q}
        now = time.time()
        with leases_lock:
            for query in store.pending():
                holder = leases.get(query["id"])
                if query["id"] in skip or (holder and holder[0] != client and now - holder[1] < lease_s):
                    continue
                leases[query["id"]] = (client, now)
                videos.wake.set()
                return {"query": describe(query), "progress": store.progress()}
        return {"query": None, "progress": store.progress()}

    @app.get("/api/query/{qid}")
    def one_query(qid: str) -> dict[str, Any]:
        for query in store.queries():
            if query["id"] == qid:
                return {"query": describe(query), "progress": store.progress()}
        raise HTTPException(404, f"no query {qid!r}")

    @app.post("/api/label")
    def label(body: LabelIn) -> dict[str, Any]:
        try:
            made = store.add_label(body.query, body.label, body.who, body.order)
        except LabelRefused as exc:
            status = 409 if "already labelled" in str(exc) else 400
            raise HTTPException(status, str(exc)) from None
        with leases_lock:
            leases.pop(body.query, None)
        videos.wake.set()
        return {"label": made.id, "query": made.query, "progress": store.progress()}

    @app.post("/api/undo")
    def undo(body: UndoIn) -> dict[str, Any]:
        try:
            undone = store.undo_last(body.who)
        except LabelRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return {"undone": undone.query, "label": undone.label, "progress": store.progress()}

    @app.get("/video/{name}")
    def video(name: str) -> Any:
        sid = name.removesuffix(".webm")
        if not name.endswith(".webm") or not SEGMENT_ID.fullmatch(sid):
            raise HTTPException(404, f"no video {name!r}: videos are /video/sNNNNNN.webm")
        try:
            path = videos.path(sid)
        except HilrlError as exc:
            raise HTTPException(404, str(exc)) from None
        if path is None:
            raise HTTPException(404, f"segment {sid} has no MuJoCo states to render (a real arm, or render_states off)")
        return FileResponse(path, media_type="video/webm", headers={"Cache-Control": "max-age=3600"})

    @app.on_event("shutdown")
    def stop() -> None:
        videos.close()

    return app


def serve(run_dir: str | Path, env_config: Any = None, host: str = "127.0.0.1", port: int = 8765,
          token: str | None = None) -> None:
    """Serve the page (:func:`create_app`) until interrupted; off loopback a token is required."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise HilrlError(f"--host {host} is off loopback: people's labels need a credential there; pass --token "
                         "SECRET (and open the printed URL), or bind 127.0.0.1")
    app = create_app(run_dir, env_config, token=token)
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    print(f"labelling page for {run_dir}: {url}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
