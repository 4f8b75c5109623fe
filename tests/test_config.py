"""Unit tests of angiogate/config.py and the embedded defaults angiogate/config.yaml."""
from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest
import yaml
from sqlalchemy.engine import make_url

import angiogate
from angiogate import config as config_module
from angiogate.config import (
    DB_PASSWORD_ENV,
    Config,
    ConfigError,
    Destination,
    Forwarding,
    Frames,
    Model,
    Policies,
    Rules,
    Web,
    Workers,
    default_yaml,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE_YAML = Path(angiogate.__file__).resolve().parent / "config.yaml"

SECTIONS = {
    "forwarding": Forwarding,
    "policies": Policies,
    "rules": Rules,
    "frames": Frames,
    "model": Model,
    "workers": Workers,
    "web": Web,
}


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch, tmp_path):
    # Neither the developer's environment nor the working directory leaks in.
    monkeypatch.delenv(DB_PASSWORD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def write_site(folder: Path, data, name: str = "angiogate.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def config_error(tmp_path: Path, data) -> str:
    site = write_site(tmp_path / "site", data)
    with pytest.raises(ConfigError) as info:
        load_config(site)
    return str(info.value)


# --- the embedded defaults -------------------------------------------------

def test_defaults_load_and_validate(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.ae_title == "ANGIOGATE"
    assert cfg.calling_ae_title == "ANGIOGATE"
    assert cfg.port == 11112
    assert cfg.bind_address == "127.0.0.1"
    assert cfg.destinations == []
    assert cfg.policies.non_cine == "forward"
    assert cfg.policies.on_error == "hold"
    assert cfg.rules.modalities == ["XA", "RF"]
    assert "1.2.840.10008.5.1.4.1.1.12.1" in cfg.rules.sop_classes
    assert "1.2.840.10008.5.1.4.1.1.7" not in cfg.rules.sop_classes  # secondary capture
    assert cfg.rules.min_frames == 8
    assert cfg.rules.max_frames == 2000
    assert cfg.rules.max_clips_per_study is None
    # The paper's protocol in seconds: from the 16th frame at 15 fps, every other frame.
    assert cfg.frames.window_start_s == pytest.approx(16 / 15, abs=1e-3)
    assert cfg.frames.sample_rate_hz == 7.5
    assert cfg.frames.samples == 16
    assert cfg.frames.size == 160
    assert cfg.model.threshold is None
    assert cfg.log_level == "INFO"


def test_default_relative_paths_resolve_against_working_directory(tmp_path):
    cfg = load_config()
    assert cfg.spool_dir == tmp_path / "var" / "spool"
    assert cfg.outbox_dir == tmp_path / "var" / "outbox"
    assert make_url(cfg.database_url).database == str((tmp_path / "var" / "angiogate.sqlite3").resolve())


def test_root_config_yaml_is_the_package_file():
    root = REPO / "config.yaml"
    assert root.exists()
    assert os.path.samefile(root, PACKAGE_YAML)
    assert root.read_bytes() == PACKAGE_YAML.read_bytes()


def test_default_yaml_names_every_field_and_nothing_else():
    data = default_yaml()
    assert set(data) == set(Config.model_fields)
    for section, model in SECTIONS.items():
        assert set(data[section]) == set(model.model_fields), section


def test_default_yaml_reads_the_package_file():
    assert default_yaml() == yaml.safe_load(PACKAGE_YAML.read_text(encoding="utf-8"))


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.port = 1  # type: ignore[misc]


# --- unknown keys ----------------------------------------------------------

def test_unknown_top_level_key_is_named(tmp_path):
    message = config_error(tmp_path, {"prot": 104})
    assert "'prot'" in message


def test_unknown_nested_key_is_named_with_its_path(tmp_path):
    message = config_error(tmp_path, {"rules": {"min_frams": 4}})
    assert "'rules.min_frams'" in message


def test_a_moved_key_names_where_it_went(tmp_path):
    # web.ready_min_free_bytes became the one watermark spool.min_free_bytes (issue 14 item 10)
    message = config_error(tmp_path, {"web": {"ready_min_free_bytes": 5}})
    assert "'web.ready_min_free_bytes' is now spool.min_free_bytes" in message


def test_spool_retention_grace_must_be_positive(tmp_path):
    assert "'spool.orphan_grace_h'" in config_error(tmp_path, {"spool": {"orphan_grace_h": 0}})


def test_unknown_key_in_a_destination_is_named(tmp_path):
    message = config_error(tmp_path, {"destinations": [
        {"ae_title": "PACS", "host": "10.0.0.1", "port": 104, "use_tls": True}]})
    assert "destinations.0.use_tls" in message


def test_unknown_override_keyword_is_named():
    with pytest.raises(ConfigError, match="'frames.sampels'"):
        load_config(frames={"sampels": 8})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- wrong types and values ------------------------------------------------

@pytest.mark.parametrize("port", [70000, -1, "eleven"])
def test_bad_port_is_named(tmp_path, port):
    message = config_error(tmp_path, {"port": port})
    assert "'port'" in message
    assert "invalid configuration" in message


@pytest.mark.parametrize("umask", ["0999", "027x", 0o1000, -1, True])
def test_bad_umask_is_named(tmp_path, umask):
    message = config_error(tmp_path, {"umask": umask})
    assert "'umask'" in message and "invalid configuration" in message


@pytest.mark.parametrize("written, umask", [("0077", 0o077), ("0o022", 0o022), (0o027, 0o027)])
def test_umask_is_octal(tmp_path, written, umask):
    from angiogate.config import load_config

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"umask": written}))
    config = load_config(site)
    assert config.umask == umask and config.model_dump(mode="json")["umask"] == f"{umask:04o}"


@pytest.mark.parametrize("key", ["ae_title", "calling_ae_title"])
@pytest.mark.parametrize("title", ["ANGIO\\GATE", "A" * 17, "", "    ", "ANGIO\tGATE"])
def test_bad_ae_title_is_named(tmp_path, key, title):
    message = config_error(tmp_path, {key: title})
    assert f"'{key}'" in message


def test_ae_title_of_sixteen_characters_is_accepted(tmp_path):
    cfg = load_config(write_site(tmp_path / "site", {"ae_title": "A" * 16}))
    assert cfg.ae_title == "A" * 16


def test_bad_regex_in_series_description_exclude_is_named(tmp_path):
    message = config_error(tmp_path, {"rules": {"series_description_exclude": ["(LV"]}})
    assert "'rules.series_description_exclude'" in message
    assert "(LV" in message


def test_bad_regex_in_series_description_include_is_named(tmp_path):
    message = config_error(tmp_path, {"rules": {"series_description_include": ["[coronary"]}})
    assert "'rules.series_description_include'" in message


def test_destination_missing_host_is_named(tmp_path):
    message = config_error(tmp_path, {"destinations": [{"ae_title": "PACS", "port": 104}]})
    assert "'destinations.0.host'" in message


def test_second_destination_bad_port_and_ae_title_are_named(tmp_path):
    message = config_error(tmp_path, {"destinations": [
        {"ae_title": "PACS", "host": "10.0.0.1", "port": 104},
        {"ae_title": "BAD\\AE", "host": "10.0.0.2", "port": 0},
    ]})
    assert "'destinations.1.ae_title'" in message
    assert "'destinations.1.port'" in message
    assert "destinations.0" not in message


@pytest.mark.parametrize("site, key", [
    ({"policies": {"on_error": "drop"}}, "'policies.on_error'"),
    ({"policies": {"non_cine": "delete"}}, "'policies.non_cine'"),
    ({"frames": {"samples": 0}}, "'frames.samples'"),
    ({"frames": {"sample_rate_hz": 0}}, "'frames.sample_rate_hz'"),
    ({"rules": {"min_frame_rate_hz": -1}}, "'rules.min_frame_rate_hz'"),
    ({"rules": {"max_clips_per_study": 0}}, "'rules.max_clips_per_study'"),
    ({"model": {"threshold": 1.5}}, "'model.threshold'"),
    ({"model": {"device": "tpu"}}, "'model.device'"),
    ({"log_level": "info"}, "'log_level'"),
    ({"rules": 5}, "'rules'"),
])
def test_wrong_values_are_named(tmp_path, site, key):
    assert key in config_error(tmp_path, site)


def test_wrong_value_in_override_keyword_is_named():
    with pytest.raises(ConfigError, match="'port'"):
        load_config(port=70000)


def test_unreadable_site_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_invalid_yaml_is_a_config_error(tmp_path):
    site = write_site(tmp_path / "site", "port: [1, 2\nrules: {")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(site)


def test_site_file_that_is_not_a_mapping_is_a_config_error(tmp_path):
    site = write_site(tmp_path / "site", "- port\n- 104\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(site)


def test_empty_site_file_gives_defaults(tmp_path):
    site = write_site(tmp_path / "site", "")
    cfg = load_config(site)
    assert cfg.port == 11112
    assert cfg.rules == load_config().rules


# --- merging -----------------------------------------------------------------

def test_site_values_override_and_nested_dicts_merge_key_by_key(tmp_path):
    site = write_site(tmp_path / "site", {
        "port": 4242,
        "ae_title": "GATE_CATHLAB2",
        "rules": {"min_frames": 4, "max_clips_per_study": 10},
        "frames": {"samples": 8},
        "policies": {"on_error": "forward"},
    })
    cfg = load_config(site)
    defaults = load_config()
    assert cfg.port == 4242
    assert cfg.ae_title == "GATE_CATHLAB2"
    assert cfg.rules.min_frames == 4
    assert cfg.rules.max_clips_per_study == 10
    # Keys the site did not name keep their defaults.
    assert cfg.rules.max_frames == defaults.rules.max_frames
    assert cfg.rules.modalities == defaults.rules.modalities
    assert cfg.rules.series_description_exclude == defaults.rules.series_description_exclude
    assert cfg.frames.samples == 8
    assert cfg.frames.window_start_s == defaults.frames.window_start_s
    assert cfg.frames.size == defaults.frames.size
    assert cfg.policies.on_error == "forward"
    assert cfg.policies.non_cine == defaults.policies.non_cine
    assert cfg.forwarding == defaults.forwarding
    # promoted_path is relative, so it resolves against the site folder; the rest is default.
    assert cfg.model.promoted_path == site.resolve().parent / "var" / "models" / "current.pt"
    assert cfg.model.model_copy(update={"promoted_path": defaults.model.promoted_path}) == defaults.model


def test_lists_are_replaced_not_merged(tmp_path):
    site = write_site(tmp_path / "site", {"rules": {"modalities": ["XA"], "series_description_exclude": []}})
    cfg = load_config(site)
    assert cfg.rules.modalities == ["XA"]
    assert cfg.rules.series_description_exclude == []


def test_destinations_are_validated_models(tmp_path):
    site = write_site(tmp_path / "site", {"destinations": [
        {"ae_title": "RESEARCH_PACS", "host": "127.0.0.1", "port": 4242}]})
    cfg = load_config(site)
    assert cfg.destinations == [Destination(ae_title="RESEARCH_PACS", host="127.0.0.1", port=4242)]


def test_override_keywords_go_over_the_site_file(tmp_path):
    site = write_site(tmp_path / "site", {"port": 4242, "rules": {"min_frames": 4}})
    cfg = load_config(site, port=5000, rules={"max_frames": 500})
    assert cfg.port == 5000
    assert cfg.rules.min_frames == 4
    assert cfg.rules.max_frames == 500


def test_loading_does_not_mutate_the_defaults(tmp_path):
    before = default_yaml()
    load_config(write_site(tmp_path / "site", {"rules": {"min_frames": 3}}))
    assert default_yaml() == before
    assert config_module._merge(before, {"rules": {"min_frames": 3}})["rules"]["min_frames"] == 3
    assert before["rules"]["min_frames"] == 8


# --- relative paths ----------------------------------------------------------

def test_relative_paths_resolve_against_the_site_file_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc" / "angiogate"
    site = write_site(folder, {
        "spool_dir": "data/spool",
        "outbox_dir": "../outbox",
        "database_url": "sqlite:///db/verdicts.sqlite3",
    })
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # the working directory must not matter
    cfg = load_config(site)
    assert cfg.spool_dir.resolve() == (folder / "data" / "spool").resolve()
    assert cfg.spool_dir.is_absolute()
    assert cfg.outbox_dir.resolve() == (tmp_path / "etc" / "outbox").resolve()
    url = make_url(cfg.database_url)
    assert url.drivername == "sqlite"
    assert Path(url.database) == (folder / "db" / "verdicts.sqlite3").resolve()


def test_absolute_paths_and_special_sqlite_urls_are_kept(tmp_path):
    folder = tmp_path / "site"
    spool = tmp_path / "abs" / "spool"
    for url in (f"sqlite:///{tmp_path}/abs.sqlite3", "sqlite://", "sqlite:///:memory:",
                "postgresql+psycopg://angiogate@dbhost/angiogate"):
        cfg = load_config(write_site(folder, {"spool_dir": str(spool), "database_url": url}))
        assert cfg.spool_dir == spool
        assert cfg.database_url == url


def test_home_relative_spool_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write_site(tmp_path / "site", {"spool_dir": "~/spool"}))
    assert cfg.spool_dir == tmp_path / "home" / "spool"


def test_relative_sqlite_url_with_explicit_driver_resolves_against_site_folder(tmp_path):
    folder = tmp_path / "site"
    cfg = load_config(write_site(folder, {"database_url": "sqlite+pysqlite:///verdicts.sqlite3"}))
    assert Path(make_url(cfg.database_url).database) == (folder / "verdicts.sqlite3").resolve()


# --- database password ---------------------------------------------------------

PG_URL = "postgresql+psycopg://angiogate@dbhost:5432/angiogate"
SECRET = "s3cr:et@/p%w?"


def test_password_comes_from_the_environment_for_postgresql(monkeypatch):
    monkeypatch.setenv(DB_PASSWORD_ENV, SECRET)
    cfg = load_config(database_url=PG_URL)
    url = make_url(cfg.database_url_with_password())
    assert url.password == SECRET
    assert url.username == "angiogate"
    assert url.host == "dbhost"
    assert url.port == 5432
    assert url.database == "angiogate"
    assert url.drivername == "postgresql+psycopg"
    # The configured URL itself never carries it.
    assert SECRET not in cfg.database_url
    assert "s3cr" not in repr(cfg)


def test_log_url_never_contains_the_password(monkeypatch):
    monkeypatch.setenv(DB_PASSWORD_ENV, SECRET)
    cfg = load_config(database_url=PG_URL)
    for_log = cfg.database_url_for_log()
    assert "s3cr" not in for_log
    assert "dbhost" in for_log
    assert make_url(for_log).password is None


def test_log_url_masks_a_password_written_in_the_url(monkeypatch):
    cfg = load_config(database_url="postgresql+psycopg://angiogate:hunter2@dbhost/angiogate")
    for_log = cfg.database_url_for_log()
    assert "hunter2" not in for_log
    assert "***" in for_log
    # With no environment password, the written one is used to connect.
    assert make_url(cfg.database_url_with_password()).password == "hunter2"


def test_no_environment_password_leaves_url_without_password():
    cfg = load_config(database_url=PG_URL)
    assert make_url(cfg.database_url_with_password()).password is None


def test_sqlite_url_never_gets_the_password(monkeypatch, tmp_path):
    monkeypatch.setenv(DB_PASSWORD_ENV, SECRET)
    cfg = load_config(database_url=f"sqlite:///{tmp_path}/v.sqlite3")
    with_password = cfg.database_url_with_password()
    assert "s3cr" not in with_password
    assert make_url(with_password).database == f"{tmp_path}/v.sqlite3"


def test_web_defaults_and_trusted_header_needs_a_proxy(tmp_path):
    cfg = load_config()
    assert (cfg.web.enabled, cfg.web.bind_address, cfg.web.port) == (True, "127.0.0.1", 8080)
    assert cfg.web.trusted_user_header is None and cfg.policies.mode == "enforce"
    assert cfg.web.secret_key_file == tmp_path / "var" / "web-secret.key"
    message = config_error(tmp_path, {"web": {"trusted_user_header": "X-Remote-User"}})
    assert "'web'" in message and "trusted_proxies" in message
    assert "web.trusted_proxies" in config_error(tmp_path, {"web": {"trusted_proxies": ["proxy.example"]}})
    assert "policies.mode" in config_error(tmp_path, {"policies": {"mode": "advisory"}})
    site = write_site(tmp_path / "ok", {"web": {"trusted_user_header": "X-Remote-User",
                                               "trusted_proxies": ["10.0.0.7"]}})
    assert load_config(site).web.trusted_proxies == ["10.0.0.7/32"]


# ------------------------------------------------ how every command finds its configuration

def test_config_is_found_by_option_then_environment_then_system_file(tmp_path, monkeypatch):
    import angiogate.config as config_module
    from angiogate.config import CONFIG_ENV, find_config

    option, named, system = (tmp_path / name for name in ("option.yaml", "named.yaml", "system.yaml"))
    for path in (option, named, system):
        path.write_text("port: 1\n")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "absent.yaml")
    assert find_config() == (None, "no site file: the embedded defaults")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    assert find_config() == (system, "the system default")
    monkeypatch.setenv(CONFIG_ENV, str(named))
    assert find_config() == (named, CONFIG_ENV)
    assert find_config(option) == (option, "--config")


def test_commands_without_config_read_the_file_angiogate_config_names(tmp_path):
    """`angiogate release UID` on a server must open the gate's database, not a new empty one."""
    import json
    import os
    import subprocess
    import sys

    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    site.write_text(yaml.safe_dump({"port": 11999, "database_url": f"sqlite:///{tmp_path / 'gate.sqlite3'}"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"ANGIOGATE_CONFIG": str(site)}
    checked = subprocess.run([sys.executable, "-m", "angiogate", "check-config"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert f"config: {site} (from ANGIOGATE_CONFIG)" in checked.stderr
    effective = json.loads(checked.stdout)
    assert effective["port"] == 11999 and effective["database_url"].endswith("gate.sqlite3")
    released = subprocess.run([sys.executable, "-m", "angiogate", "release", "1.2.3", "--wait", "0"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert "1.2.3: unknown SOP Instance UID" in released.stdout, released.stdout + released.stderr
    assert (tmp_path / "gate.sqlite3").exists() and not (elsewhere / "var").exists()


def test_serving_threads_leave_the_prepare_threads_their_cores(monkeypatch):
    # On 2 cores the judge's prepare threads decode the next clips while the model runs:
    # a second inference thread only competes with them (README, "Where the gate's time goes").
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert load_config(None).serving_threads() == 1  # 2 cores, decode_threads 2
    assert load_config(None, workers={"decode_threads": 1}).serving_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert load_config(None).serving_threads() == 14
    assert load_config(None, model={"threads": 3}).serving_threads() == 3  # set by the site: as set


def test_the_serving_engine_gets_the_serving_threads(monkeypatch, tmp_path):
    from angiogate.modelstore import resolve

    seen = {}

    class Opened:
        version, name, info = "v", "fake", type("Info", (), {"extra": {}})()

    def open_engine(path, **options):
        seen.update(options)
        return Opened()

    monkeypatch.setattr(resolve, "open_engine", open_engine)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    resolve.open_model(load_config(None, workers={"decode_threads": 1}), tmp_path / "x.pt")
    assert seen["threads"] == 3
