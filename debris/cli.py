"""Command line: parse, call, render. Nothing else lives here."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Optional

import typer

from debris import __version__


class Exit(IntEnum):
    """Documented exit codes (README.md, docs/cli.md)."""

    OK = 0
    ERROR = 1  # could not run: bad store, unreadable or refused plan
    USAGE = 2  # bad flags or a policy refused without --force
    FAILURES = 3  # ran, but a delete failed or part of the store could not be read
    DEBRIS_FOUND = 4  # plan --detailed-exitcode: the plan is not empty
    LOCK_HELD = 5  # --lock-file is held by another run: nothing was done
    INTERRUPTED = 130


app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help texts hold literal brackets (s3://BUCKET[/ROOTDIR])
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find and safely delete debris (abandoned uploads, temp files) in a container registry's storage. "
    "Nothing is deleted without --confirm; blobs, manifests, links and tags are never deleted.",
)

StoreArg = Annotated[
    Optional[str],  # noqa: UP045 - typer needs the Optional spelling on 3.11
    typer.Argument(
        metavar="STORE",
        help="The registry's rootdirectory (the directory that holds docker/) as a path or file://PATH; "
        "or s3://BUCKET[/ROOTDIR], rgw://BUCKET[/ROOTDIR] (with --endpoint-url).",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--registry-config", metavar="FILE", help="Read STORE from the registry's own config.yml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
RowsOpt = Annotated[int, typer.Option("--rows", min=1, help="Rows shown per table in human output.")]
OlderOpt = Annotated[
    str,
    typer.Option(
        "--older-than",
        metavar="AGE",
        help="Upload sessions idle at least this long are debris (30s, 90m, 36h, 7d). Under 15m needs --force.",
    ),
]
ProbeRepoOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--probe-repo",
        metavar="NAME",
        help="A write-probe repository (repeatable): its sessions are planned at --probe-older-than. "
        "Refused if it holds tags or manifests, unless --force.",
    ),
]
ProbeOlderOpt = Annotated[
    str, typer.Option("--probe-older-than", metavar="AGE", help="Idle age for probe repositories' sessions.")
]
IncludeOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--include",
        metavar="CLASSES",
        help="Comma-separated classes to plan: upload_session (default; takes temp files inside a session "
        "with it), multipart_upload (default on S3/RGW: incomplete multipart uploads whose session is gone, "
        "and failed copies onto blob paths), folder_marker (S3 'dir/' objects of other tools), temp_file (crash-left <file>.<uuid>.tmp anywhere: finding them walks every blob and "
        "link directory, so it is opt-in and much slower on a large store).",
    ),
]
EndpointOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--endpoint-url",
        metavar="URL",
        help="S3/RGW endpoint, e.g. http://127.0.0.1:7480 (default: AWS).",
        envvar="AWS_ENDPOINT_URL",
    ),
]
RegionOpt = Annotated[str | None, typer.Option("--region", help="S3 region (default: the AWS chain, else us-east-1).")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="AWS profile for credentials.")]  # noqa: UP045
CaBundleOpt = Annotated[
    str | None, typer.Option("--ca-bundle", metavar="FILE", help="CA bundle to verify the endpoint's TLS.")
]
NoVerifyOpt = Annotated[bool, typer.Option("--no-verify-tls", help="Do not verify the endpoint's TLS certificate.")]
PathStyleOpt = Annotated[
    bool, typer.Option("--path-style", help="S3 path-style addressing (MinIO, most on-premises S3; rgw:// always).")
]
BlobMultipartOpt = Annotated[
    str,
    typer.Option(
        "--blob-multipart-older-than",
        metavar="AGE",
        help="S3: incomplete multipart uploads onto blobs/…/data (failed copies) idle this long are debris (floor 1d).",
    ),
]
LockOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--lock-file", metavar="PATH", help="Run only if no other debris run holds this lock (exit 5 if held)."
    ),
]
MetricsOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--metrics-file",
        metavar="PATH",
        help="Write Prometheus textfile metrics of the run to PATH (atomically), e.g. for node_exporter.",
    ),
]
LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format",
        metavar="FORMAT",
        help="text (default): the report only; json: also one JSON line per item and error on stderr.",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Allow ages under the safety floor and non-empty probe repositories.")
]


def _fail(code: Exit, message: str) -> typer.Exit:
    typer.echo(f"debris: error: {message}", err=True)
    return typer.Exit(int(code))


@contextlib.contextmanager
def _errors():
    """Map expected failures to one line on stderr and a documented exit code."""
    from debris.apply import PlanRefused
    from debris.plan import PlanFormatError
    from debris.policy import PolicyError
    from debris.stores import StoreSpecError
    from debris.stores.base import StoreError

    try:
        yield
    except (PolicyError, StoreSpecError) as e:
        raise _fail(Exit.USAGE, str(e)) from None
    except PlanRefused as e:
        raise _fail(Exit.ERROR, f"plan refused, nothing deleted: {e}") from None
    except (StoreError, PlanFormatError) as e:
        raise _fail(Exit.ERROR, str(e)) from None
    except KeyboardInterrupt:
        raise _fail(Exit.INTERRUPTED, "interrupted") from None


def _open(
    store: str | None,
    registry_config: str | None,
    endpoint_url=None,
    region=None,
    profile=None,
    ca_bundle=None,
    no_verify_tls=False,
    path_style=False,
):
    from debris.stores import open_store

    verify = False if no_verify_tls else ca_bundle
    return open_store(
        store,
        registry_config,
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
        verify=verify,
        path_style=path_style or None,  # None: keep what the registry config says
    )


def _policy(st, older_than, probe_repo, probe_older_than, include, force, blob_multipart_older_than="7d"):
    from debris.policy import DEFAULT_INCLUDE, DEFAULT_INCLUDE_MULTIPART, Policy, parse_duration, parse_include
    from debris.stores.base import Capability

    default = (
        DEFAULT_INCLUDE_MULTIPART
        if st is not None and Capability.MULTIPART_UPLOADS in st.capabilities
        else DEFAULT_INCLUDE
    )
    return Policy(
        include=parse_include(include, default),
        older_than=parse_duration(older_than),
        probe_repos=tuple(dict.fromkeys(probe_repo or ())),
        probe_older_than=parse_duration(probe_older_than),
        force=force,
        blob_multipart_older_than=parse_duration(blob_multipart_older_than),
    ).check()


def _make_plan(st, policy):
    from debris import inventory
    from debris.layout import Kind
    from debris.plan import make_plan, needs_startedat

    now = datetime.now(UTC)
    obs = inventory.observe(
        st,
        want_temp_files=Kind.TEMP_FILE in policy.include,
        probe_repos=policy.probe_repos,
        worth_detail=needs_startedat(policy, now),
        progress=_walk_progress(),
    )
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    plan = make_plan(obs, policy, now, st.url, st.identity())
    plan.requests = st.request_counts()
    return plan, now


def _walk_progress():
    """'listed N directories' on stderr, at most a few times a second, only for people at a terminal."""
    if not sys.stderr.isatty():
        return None
    import time

    last = [0.0]

    def show(n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:
            last[0] = now
            sys.stderr.write(f"\rlisted {n:,} directories")
            sys.stderr.flush()

    return show


def _progress():
    """A one-line progress meter on stderr, only for people at a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(n: int, total: int, _outcome) -> None:
        sys.stderr.write(f"\r{n}/{total} items")
        if n == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _check_out_path(path: str, store) -> None:
    root = getattr(store, "root", None)
    if root and (os.path.realpath(path) + "/").startswith(root.rstrip("/") + "/"):
        raise _fail(
            Exit.USAGE,
            f"--out {path} is inside the store: planning never writes to the store; write the plan elsewhere",
        )


def _write_plan_file(path: str, data: dict) -> None:
    from debris import jsonio

    if path == "-":
        jsonio.dump(data, sys.stdout)
        return
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=".debris-plan-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            jsonio.dump(data, f)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@app.command()
def scan(
    store: StoreArg = None,
    registry_config: ConfigOpt = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    ca_bundle: CaBundleOpt = None,
    no_verify_tls: NoVerifyOpt = False,
    path_style: PathStyleOpt = False,
    by_repo: Annotated[bool, typer.Option("--by-repo", help="Also break totals down per repository.")] = False,
    json_out: JsonOpt = False,
    rows: RowsOpt = 50,
) -> None:
    """Inventory: every path classified, with counts and sizes per class (read-only)."""
    from debris import inventory, render

    with _errors():
        st = _open(store, registry_config, endpoint_url, region, profile, ca_bundle, no_verify_tls, path_style)
        report = inventory.scan(st, by_repository=by_repo, progress=_walk_progress())
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    if json_out:
        data = render.scan_json(report, st.url)
        if st.request_counts() is not None:
            data["requests"] = st.request_counts()
        render.dump_json(data)
    else:
        typer.echo(render.scan_text(report, st.url, rows))
    if report.problems.errors:
        raise typer.Exit(int(Exit.FAILURES))


@app.command()
def plan(
    store: StoreArg = None,
    registry_config: ConfigOpt = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    ca_bundle: CaBundleOpt = None,
    no_verify_tls: NoVerifyOpt = False,
    path_style: PathStyleOpt = False,
    older_than: OlderOpt = "24h",
    probe_repo: ProbeRepoOpt = None,
    probe_older_than: ProbeOlderOpt = "10m",
    include: IncludeOpt = None,
    blob_multipart_older_than: BlobMultipartOpt = "7d",
    force: ForceOpt = False,
    out: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--out", metavar="FILE", help="Write the plan file for `debris apply` ('-' = stdout)."),
    ] = None,
    json_out: JsonOpt = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 4 when the plan holds anything to delete.")
    ] = False,
    rows: RowsOpt = 50,
) -> None:
    """Dry-run deletion plan: only safe classes, never blobs, manifests, links or tags. Writes nothing to the store."""
    from debris import render

    with _errors():
        _policy(None, older_than, probe_repo, probe_older_than, include, force, blob_multipart_older_than)
        st = _open(store, registry_config, endpoint_url, region, profile, ca_bundle, no_verify_tls, path_style)
        policy = _policy(st, older_than, probe_repo, probe_older_than, include, force, blob_multipart_older_than)
        if out and out != "-":
            _check_out_path(out, st)
        the_plan, now = _make_plan(st, policy)
    data = the_plan.to_json()
    if out:
        _write_plan_file(out, data)
    if json_out and out != "-":
        render.dump_json(data)
    elif not json_out:
        text = render.plan_text(the_plan, now, rows)
        typer.echo(text, err=(out == "-"))
        if out and out != "-":
            typer.echo(f"\nplan written to {out}; review it, then: debris apply {out} --confirm")
    if the_plan.errors:
        raise typer.Exit(int(Exit.FAILURES))
    if detailed_exitcode and the_plan.items:
        raise typer.Exit(int(Exit.DEBRIS_FOUND))


def _finish_apply(result, st, json_out: bool, rows: int, log_format: str = "text") -> None:
    from debris import ops, render

    if json_out:
        data = result.to_json()
        if st.request_counts() is not None:
            data["requests"] = st.request_counts()
        render.dump_json(data)
    else:
        typer.echo(render.apply_text(result, rows))
    ops.log_events(result, log_format)
    if result.interrupted:
        raise typer.Exit(int(Exit.INTERRUPTED))
    if result.failed:
        raise typer.Exit(int(Exit.FAILURES))


class _Run:
    """What an unattended run reports about itself: filled in as the run goes."""

    store_url = "unknown"
    result = None


@contextlib.contextmanager
def _unattended(command: str, lock_file: str | None, metrics_file: str | None, log_format: str):
    """Hold the lock, and write the metrics file however the run ends (except when locked out)."""
    import time

    from debris import ops

    if log_format not in ("text", "json"):
        raise _fail(Exit.USAGE, f"--log-format {log_format!r}: use text or json")
    run = _Run()
    started = time.monotonic()
    try:
        lock = ops.hold_lock(lock_file)
        lock.__enter__()
    except ops.LockHeld as e:
        raise _fail(Exit.LOCK_HELD, f"{e}; nothing done") from None
    except OSError as e:
        raise _fail(Exit.ERROR, f"--lock-file {lock_file}: {e.strerror}") from None
    code = 0
    try:
        yield run
    except typer.Exit as e:
        code = e.exit_code
        raise
    except BaseException:
        code = int(Exit.ERROR)
        raise
    finally:
        try:
            if metrics_file:
                ops.write_metrics(
                    metrics_file,
                    command=command,
                    store_url=run.store_url,
                    result=run.result,
                    duration=time.monotonic() - started,
                    exit_code=code,
                )
        except OSError as e:
            raise _fail(Exit.ERROR, f"--metrics-file {metrics_file}: {e.strerror}") from None
        finally:
            lock.__exit__(None, None, None)


@app.command()
def apply(
    planfile: Annotated[
        str, typer.Argument(metavar="PLANFILE", help="A plan written by `debris plan --out` ('-' = stdin).")
    ],
    confirm: Annotated[
        bool, typer.Option("--confirm", help="Really delete. Without it, show what would be deleted.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Needed again if the plan was made with --force.")] = False,
    store: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--store", metavar="STORE", help="Expect the plan to be for this store (refused otherwise)."),
    ] = None,
    registry_config: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--registry-config",
            metavar="FILE",
            help="Open the store (and its credentials) from the registry's config.yml; it must be the planned one.",
        ),
    ] = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    ca_bundle: CaBundleOpt = None,
    no_verify_tls: NoVerifyOpt = False,
    path_style: PathStyleOpt = False,
    lock_file: LockOpt = None,
    metrics_file: MetricsOpt = None,
    log_format: LogFormatOpt = "text",
    json_out: JsonOpt = False,
    rows: RowsOpt = 50,
) -> None:
    """Re-verify a plan file item by item and delete what is still safe (only with --confirm)."""
    import json

    from debris.apply import apply_plan
    from debris.plan import Plan, PlanFormatError

    with _unattended("apply", lock_file, metrics_file, log_format) as run:
        with _errors():
            try:
                if planfile == "-":
                    raw = json.load(sys.stdin)
                else:
                    with open(planfile, encoding="utf-8") as f:
                        raw = json.load(f)
            except OSError as e:
                raise _fail(Exit.ERROR, f"cannot read plan {planfile}: {e.strerror}") from None
            except ValueError as e:
                raise PlanFormatError(f"{planfile} is not JSON: {e}") from None
            the_plan = Plan.from_json(raw)
            run.store_url = the_plan.store_url
            endpoint = endpoint_url or (None if registry_config else _planned_endpoint(the_plan))
            spec = store or (None if registry_config else the_plan.store_url)
            st = _open(spec, registry_config, endpoint, region, profile, ca_bundle, no_verify_tls, path_style)
            run.result = apply_plan(st, the_plan, confirm=confirm, force=force, progress=_progress())
        _finish_apply(run.result, st, json_out, rows, log_format)


def _planned_endpoint(the_plan) -> str | None:
    """The S3 endpoint a plan was made against, so apply reaches the same store by default."""
    endpoint = the_plan.store_identity.get("endpoint")
    return endpoint if isinstance(endpoint, str) and "://" in endpoint else None


@app.command()
def clean(
    store: StoreArg = None,
    registry_config: ConfigOpt = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    ca_bundle: CaBundleOpt = None,
    no_verify_tls: NoVerifyOpt = False,
    path_style: PathStyleOpt = False,
    older_than: OlderOpt = "24h",
    probe_repo: ProbeRepoOpt = None,
    probe_older_than: ProbeOlderOpt = "10m",
    include: IncludeOpt = None,
    blob_multipart_older_than: BlobMultipartOpt = "7d",
    force: ForceOpt = False,
    confirm: Annotated[bool, typer.Option("--confirm", help="Really delete. Without it, a dry run.")] = False,
    lock_file: LockOpt = None,
    metrics_file: MetricsOpt = None,
    log_format: LogFormatOpt = "text",
    json_out: JsonOpt = False,
    rows: RowsOpt = 50,
) -> None:
    """Plan and apply in one step (for cron): every item still passes the delete gate."""
    from debris.apply import apply_plan

    with _unattended("clean", lock_file, metrics_file, log_format) as run:
        with _errors():
            _policy(None, older_than, probe_repo, probe_older_than, include, force, blob_multipart_older_than)
            st = _open(store, registry_config, endpoint_url, region, profile, ca_bundle, no_verify_tls, path_style)
            run.store_url = st.url
            policy = _policy(st, older_than, probe_repo, probe_older_than, include, force, blob_multipart_older_than)
            the_plan, _ = _make_plan(st, policy)
            run.result = apply_plan(st, the_plan, confirm=confirm, force=force, progress=_progress())
        run.result.errors[:0] = the_plan.errors
        _finish_apply(run.result, st, json_out, rows, log_format)


@app.command()
def probe(
    store: StoreArg = None,
    registry_config: ConfigOpt = None,
    registry: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--registry", metavar="URL", help="The registry to probe, e.g. http://127.0.0.1:5000 (https:// by default)."
        ),
    ] = None,
    username: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--username", metavar="USER", envvar="DEBRIS_REGISTRY_USERNAME", help="Registry user (basic or token auth)."
        ),
    ] = None,
    password: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--password",
            metavar="PASSWORD",
            envvar="DEBRIS_REGISTRY_PASSWORD",
            help="Registry password (prefer the env var).",
        ),
    ] = None,
    probe_repo: Annotated[
        str,
        typer.Option(
            "--probe-repo",
            metavar="NAME",
            help="Repository the probe's uploads go to; clean its leftovers with `clean --probe-repo NAME`.",
        ),
    ] = "debris-probe",
    timeout: Annotated[
        str,
        typer.Option("--timeout", metavar="DURATION", help="Bound on the whole probe run (all targets, all requests)."),
    ] = "5s",
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    ca_bundle: CaBundleOpt = None,
    no_verify_tls: NoVerifyOpt = False,
    path_style: PathStyleOpt = False,
    json_out: JsonOpt = False,
    serve: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--serve",
            metavar="ADDR",
            help="Serve /healthz/read and /healthz/write (200 healthy, 503 not) on HOST:PORT until SIGTERM.",
        ),
    ] = None,
    interval: Annotated[
        str, typer.Option("--interval", metavar="DURATION", help="--serve: probe again this often.")
    ] = "30s",
) -> None:
    """Write-health probe: can the registry and its store take one more byte? Exit 10-15 name the failure."""
    import signal
    import ssl
    import threading

    from debris import layout
    from debris import probe as probing
    from debris.policy import parse_duration

    with _errors():
        if not (store or registry_config or registry):
            raise _fail(Exit.USAGE, "probe needs a target: STORE, --registry-config FILE and/or --registry URL")
        if not layout.is_valid_repository(probe_repo):
            raise _fail(Exit.USAGE, f"--probe-repo {probe_repo!r} is not a valid repository name")
        limit = parse_duration(timeout).total_seconds()
        every = parse_duration(interval).total_seconds()
        if limit <= 0 or every <= 0:
            raise _fail(Exit.USAGE, "--timeout and --interval must be at least 1s")
        if password is not None and username is None:
            raise _fail(Exit.USAGE, "--password needs --username")
        target = None
        if registry:
            try:
                url = probing.normalize_registry_url(registry)
            except ValueError as e:
                raise _fail(Exit.USAGE, str(e)) from None
            context = None
            if url.startswith("https://"):
                context = ssl.create_default_context(cafile=ca_bundle)
                if no_verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            target = probing.RegistryTarget(url, username, password, context)
        opener = None
        if store or registry_config:

            def opener():
                return _open(
                    store, registry_config, endpoint_url, region, profile, ca_bundle, no_verify_tls, path_style
                )

        label = store or f"--registry-config {registry_config}"
        prober = probing.Prober(target, opener, probe_repo, limit, label)
        if serve:
            try:
                server = probing.HealthServer(serve, prober)
            except ValueError as e:
                raise _fail(Exit.USAGE, str(e)) from None
            except OSError as e:
                raise _fail(Exit.ERROR, f"cannot listen on {serve}: {e.strerror or e}") from None
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            try:
                server.refresh()  # a StoreSpecError surfaces here, before anything is served
                server.start()
                typer.echo(f"debris probe: serving http://{server.address}/healthz/read and /healthz/write", err=True)
                probing.serve(server, every, stop, lambda line: typer.echo(line, err=True))
            finally:
                server.close()
            return
        report = prober.run()
    if json_out:
        from debris import render

        render.dump_json(report.to_json())
    else:
        typer.echo(probing.report_text(report))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@app.command()
def audit(
    store: StoreArg = None,
    registry_config: ConfigOpt = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    ca_bundle: CaBundleOpt = None,
    no_verify_tls: NoVerifyOpt = False,
    path_style: PathStyleOpt = False,
    delete_untagged: Annotated[
        bool,
        typer.Option(
            "--delete-untagged", help="As garbage-collect -m: manifests no tag (or kept index) reaches go too."
        ),
    ] = False,
    json_out: JsonOpt = False,
    rows: RowsOpt = 50,
) -> None:
    """What garbage collection would delete and how much it would free (read-only, any store)."""
    from debris import audit as auditing
    from debris import render

    with _errors():
        st = _open(store, registry_config, endpoint_url, region, profile, ca_bundle, no_verify_tls, path_style)
        result = auditing.run(st, delete_untagged, progress=_walk_progress())
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    if json_out:
        data = result.to_json()
        if st.request_counts() is not None:
            data["requests"] = st.request_counts()
        render.dump_json(data)
    else:
        typer.echo(render.audit_text(result, st.url, rows))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"debris {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    pass


def main() -> None:
    app()
