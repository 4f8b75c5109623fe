"""The review web app: verdict list, clip page, labels, releases, agreement, health, metrics.

`create_app` builds a Starlette application over one verdict log and spool.
Pages are server-rendered Jinja2 templates with a little plain JavaScript
(static/review.js). Everything but /health/*, /metrics, /login and /static
needs a logged-in reviewer (angiogate.web.auth); every POST also needs the
session's CSRF token. URLs name clips by their verdict row id only: no SOP
Instance UID, study UID or patient ID travels in a URL or in this module's
log lines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from angiogate.config import Config
from angiogate.engines.info import REASON_CLASSES
from angiogate.store.ledger import release as release_clips
from angiogate.store.review import ReviewError, add_labels, get_account, record_login, set_password_hash
from angiogate.store.schema import Verdict
from angiogate.web import auth, media, queries
from angiogate.web.health import GateCollector, GateLink, readiness

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SCOPES = ("clip", "series", "study")


def create_app(config: Config, engine: Engine, link: GateLink | None = None) -> Starlette:
    """The app for one gate; `link` lets it see the gate's workers and serving model."""
    web = config.web
    link = link or GateLink(spool_dir=config.spool_dir)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["reason_classes"] = REASON_CLASSES
    templates.env.globals["shadow"] = config.policies.mode == "shadow"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GateCollector(engine, link))
    cache_dir = Path(web.cache_dir)
    throttle = auth.LoginThrottle()

    def render(request: Request, name: str, status_code: int = 200, **context) -> Response:
        context |= {"user": auth.current_user(request, web), "csrf_token": auth.csrf_token(request)}
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def login_redirect(request: Request) -> RedirectResponse:
        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)

    async def writer(request: Request) -> tuple[str | None, dict, Response | None]:
        """The reviewer and form of a POST, or the response refusing it."""
        form = dict(await request.form())
        form["ids"] = (await request.form()).getlist("ids")
        user = auth.current_user(request, web)
        if user is None:
            return None, form, PlainTextResponse("log in to change anything", status_code=401)
        token = form.get("csrf_token") or request.headers.get("x-csrf-token")
        if not auth.csrf_ok(request, token):
            return None, form, PlainTextResponse("missing or wrong CSRF token; reload the page", status_code=403)
        return user, form, None

    # ----------------------------------------------------------- health, metrics

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    def ready(request: Request) -> Response:
        checks = readiness(engine, link, config.spool.min_free_bytes)
        ok = all(c.ok for c in checks)
        return JSONResponse({"status": "ready" if ok else "not ready",
                             "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}},
                            status_code=200 if ok else 503)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------- login

    async def login_page(request: Request) -> Response:
        return render(request, "login.html", next=_safe_next(request.query_params.get("next")), error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        next_url = _safe_next(form.get("next"))
        if not auth.csrf_ok(request, form.get("csrf_token")):
            return render(request, "login.html", 403, next=next_url, error="The form expired; try again.")
        address = request.client.host if request.client else "?"
        if throttle.blocked(address):
            log.warning("web: login refused from %s: too many failed attempts", address)
            return render(request, "login.html", 429, next=next_url,
                          error="Too many failed logins from this address; wait 15 minutes.")
        name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
        account = get_account(engine, name) if name else None
        if not auth.verify_password(account.password_hash if account else None, password):
            throttle.failed(address)
            log.warning("web: failed login from %s", address)
            return render(request, "login.html", 401, next=next_url, error="Wrong name or password.")
        throttle.succeeded(address)
        if auth.needs_rehash(account.password_hash):
            set_password_hash(engine, account.name, auth.hash_password(password))
        request.session.clear()
        request.session["user"] = account.name
        auth.csrf_token(request)  # a new token for the new session
        record_login(engine, account.name)
        log.info("web: %s logged in", account.name)
        return RedirectResponse(next_url, status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        if auth.csrf_ok(request, form.get("csrf_token")):
            request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------- pages

    async def home(request: Request) -> Response:
        return RedirectResponse("/verdicts", status_code=303)

    def verdict_list(request: Request) -> Response:
        if auth.current_user(request, web) is None:
            return login_redirect(request)
        filters = queries.parse_filters(request.query_params)
        page = queries.verdict_page(engine, filters, web.page_size)

        def link_with(**changes) -> str:
            return "/verdicts?" + urlencode(filters.query_args(**changes))

        return render(request, "list.html", page=page, f=filters, link_with=link_with,
                      message=request.query_params.get("message"))

    async def find(request: Request) -> Response:
        """Look a clip up by an identifier (sent in a form body, never in a URL)."""
        user, form, refused = await writer(request)
        if refused:
            return refused
        value = str(form.get("identifier", "")).strip()
        with Session(engine) as session:
            rows = session.execute(select(Verdict.id, Verdict.sop_instance_uid, Verdict.series_instance_uid)
                                   .where(or_(Verdict.sop_instance_uid == value,
                                              Verdict.series_instance_uid == value,
                                              Verdict.study_instance_uid == value,
                                              Verdict.accession_number == value,
                                              Verdict.patient_id == value))
                                   .order_by(Verdict.id)).all() if value else []
        if not rows:
            return RedirectResponse("/verdicts?" + urlencode({"message": "no clip matches that identifier"}), 303)
        if len(rows) == 1:
            return RedirectResponse(f"/clips/{rows[0].id}", 303)
        if any(r.series_instance_uid == value for r in rows):
            return RedirectResponse(f"/verdicts?series_of={rows[0].id}", 303)
        return RedirectResponse(f"/verdicts?study_of={rows[0].id}", 303)

    def clip_page(request: Request) -> Response:
        if auth.current_user(request, web) is None:
            return login_redirect(request)
        detail = queries.clip_detail(engine, request.path_params["verdict_id"])
        if detail is None:
            return render(request, "missing.html", 404)
        newest = detail.labels[0] if detail.labels else None
        return render(request, "clip.html", d=detail, v=detail.verdict, newest=newest,
                      message=request.query_params.get("message"),
                      model=link.model(), checkpoint=_checkpoint(config))

    def _spool_file(verdict_id: int) -> tuple[Verdict | None, Path | None]:
        with Session(engine) as session:
            verdict = session.get(Verdict, verdict_id)
            if verdict is None:
                return None, None
            session.expunge(verdict)
        path = (Path(config.spool_dir) / verdict.file_path).resolve()
        if Path(config.spool_dir).resolve() not in path.parents or not path.exists():
            return verdict, None
        return verdict, path

    def _picture(request: Request, make) -> Response:
        if auth.current_user(request, web) is None:
            return PlainTextResponse("log in first", status_code=401)
        verdict, path = _spool_file(request.path_params["verdict_id"])
        if verdict is None or path is None:
            return PlainTextResponse("the clip's file is not in the spool", status_code=404)
        try:
            return FileResponse(make(verdict, path), headers={"Cache-Control": "private, max-age=3600"})
        except Exception as exc:  # an undecodable clip has no pictures; say so, do not crash
            log.warning("web: no picture for clip #%d: %s", verdict.id, type(exc).__name__)
            return PlainTextResponse(f"cannot render this clip: {type(exc).__name__}: {exc}", status_code=422)

    def preview(request: Request) -> Response:
        return _picture(request, lambda v, p: media.preview_gif(
            p, cache_dir / f"{v.file_sha256[:32]}-preview.gif", config))

    def sampled(request: Request) -> Response:
        if auth.current_user(request, web) is None:
            return PlainTextResponse("log in first", status_code=401)
        checkpoint = _checkpoint(config)
        engine_for = media.review_engine(checkpoint) if checkpoint else None
        tag = engine_for.digest[:12] if engine_for else "nomodel"
        return _picture(request, lambda v, p: media.sampled_frames_png(
            p, cache_dir / f"{v.file_sha256[:32]}-{tag}-frames.png", config, engine_for))

    def heatmap(request: Request) -> Response:
        if auth.current_user(request, web) is None:
            return PlainTextResponse("log in first", status_code=401)
        checkpoint = _checkpoint(config)
        if checkpoint is None:
            return JSONResponse({"error": "no model is serving: there is nothing to explain"}, status_code=409)
        verdict, path = _spool_file(request.path_params["verdict_id"])
        if verdict is None or path is None:
            return JSONResponse({"error": "the clip's file is not in the spool"}, status_code=404)
        try:
            result = media.heat_map(path, cache_dir, config, checkpoint, verdict.file_sha256)
        except Exception as exc:
            log.warning("web: no heat map for clip #%d: %s", verdict.id, type(exc).__name__)
            return JSONResponse({"error": f"cannot explain this clip: {type(exc).__name__}: {exc}"}, status_code=422)
        if request.path_params.get("kind") == "png":
            return FileResponse(result["png"], headers={"Cache-Control": "private, max-age=3600"})
        return JSONResponse({k: v for k, v in result.items() if k != "png"}
                            | {"png": f"/clips/{verdict.id}/heatmap.png"})

    def agreement_page(request: Request) -> Response:
        if auth.current_user(request, web) is None:
            return login_redirect(request)
        return render(request, "agreement.html", rows=queries.agreement(engine), mode=config.policies.mode)

    # ----------------------------------------------------------------- actions

    def _label(uids: list[str], form: dict, user: str) -> str:
        try:
            outcomes = add_labels(engine, uids, label=str(form.get("label", "")), reason=form.get("reason"),
                                  note=form.get("note"), reviewer=user)
        except ReviewError as exc:
            return f"not labelled: {exc}"
        done = sum(1 for o in outcomes.values() if o == "labelled")
        return f"labelled {done} clip(s) {form.get('label')}"

    def _release(uids: list[str], user: str) -> str:
        outcomes = release_clips(engine, uids, link.destinations, user)
        done = sum(1 for o in outcomes.values() if o == "released")
        pruned = sum(1 for o in outcomes.values() if o.startswith("cannot be released: its bytes were pruned"))
        skipped = len(uids) - done - pruned
        return (f"released {done} clip(s)"
                + (f"; {pruned} not released: their bytes were pruned from the spool (spool retention); "
                   "send them to the gate again to release them" if pruned else "")
                + (f"; {skipped} not held, left as they are" if skipped else ""))

    async def clip_action(request: Request) -> Response:
        user, form, refused = await writer(request)
        if refused:
            return refused
        verdict_id, action = request.path_params["verdict_id"], request.path_params["action"]
        if action not in ("label", "release"):
            return PlainTextResponse("unknown action", status_code=404)
        scope = form.get("scope", "clip")
        if scope not in SCOPES:
            return PlainTextResponse(f"scope must be one of {', '.join(SCOPES)}", status_code=400)
        uids = queries.uids_in_scope(engine, verdict_id, scope)
        if not uids:
            return PlainTextResponse("no such clip", status_code=404)
        message = _label(uids, form, user) if action == "label" else _release(uids, user)
        log.info("web: %s, %s of clip #%d: %s", user, scope, verdict_id, message)
        return RedirectResponse(f"/clips/{verdict_id}?" + urlencode({"message": message}), status_code=303)

    async def bulk_action(request: Request) -> Response:
        user, form, refused = await writer(request)
        if refused:
            return refused
        ids = [int(i) for i in form.get("ids", []) if str(i).isdigit()]
        uids = queries.uids_of_ids(engine, ids)
        action = form.get("action")
        if not uids:
            message = "select clips first"
        elif action == "release":
            message = _release(uids, user)
        elif action in ("label-satisfactory", "label-unsatisfactory"):
            message = _label(uids, form | {"label": action.removeprefix("label-")}, user)
        else:
            return PlainTextResponse("unknown action", status_code=400)
        log.info("web: %s, %d selected clip(s): %s", user, len(uids), message)
        back = _safe_next(form.get("back")) if form.get("back") else "/verdicts"
        sep = "&" if "?" in back else "?"
        return RedirectResponse(back + sep + urlencode({"message": message}), status_code=303)

    routes = [
        Route("/health/live", live), Route("/health/ready", ready), Route("/metrics", metrics),
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home), Route("/verdicts", verdict_list),
        Route("/verdicts/find", find, methods=["POST"]), Route("/verdicts/bulk", bulk_action, methods=["POST"]),
        Route("/clips/{verdict_id:int}", clip_page),
        Route("/clips/{verdict_id:int}/preview.gif", preview),
        Route("/clips/{verdict_id:int}/frames.png", sampled),
        Route("/clips/{verdict_id:int}/heatmap.{kind:str}", heatmap),
        Route("/clips/{verdict_id:int}/{action:str}", clip_action, methods=["POST"]),
        Route("/agreement", agreement_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=auth.secret_key(web.secret_key_file),
                             session_cookie="angiogate_session", max_age=web.session_max_age_s,
                             same_site="strict", https_only=web.secure_cookies)]
    return Starlette(routes=[*routes], middleware=[Middleware(_SecurityHeaders), *middleware])


class _SecurityHeaders:
    """Headers every answer carries: no MIME sniffing, no framing, no referrer to other sites."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"same-origin")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), *self.HEADERS])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _safe_next(value) -> str:
    """A local path to go back to after login (never another site)."""
    value = str(value or "")
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/verdicts"
    return value


def _checkpoint(config: Config) -> Path | None:
    from angiogate.modelstore.resolve import model_path

    try:
        return model_path(config)
    except FileNotFoundError:
        return None
