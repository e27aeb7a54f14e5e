"""An OPUS job definition imported with ``jobmill types import``, served, and run as OPUS clients
run it: form parameters and an uploaded input through the UWS face, results and provenance back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lxml import etree
from typer.testing import CliRunner

from jobmill.cli.main import app
from jobmill.config import Settings
from jobmill.domain.opus_jdl import JdlError, parse
from jobmill.factory import build
from tests.conftest import app_client, wait_for

DATA = Path(__file__).resolve().parents[1] / "data" / "opus"
SAMPLE = DATA / "gammapy_maps.xml"
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK = "{http://www.w3.org/1999/xlink}"
runner = CliRunner()


def test_import_writes_a_job_type_that_loads_runs_and_says_what_it_left_out(
    settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "imported"
    result = runner.invoke(app, ["types", "import", str(SAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'gammapy_maps.yaml'}" in result.stdout
    # What jobmill has no field for is reported, never silently dropped.
    for unmapped in ("quote: 120 s", "ucd=pos.eq.ra", "jobmill does not fetch inputs"):
        assert unmapped in result.stdout, unmapped
    written = yaml.safe_load((out / "gammapy_maps.yaml").read_text())
    assert written["version"] == "1.2" and written["execution_duration"] == 600
    params = written["parameters"]
    assert params["nxpix"] == {
        "type": "integer",
        "min": 0,
        "max": 1000,
        "default": 400,
        "description": "Number of pixels on the X axis",
        "deliver": "env",
        "env": "nxpix",
    }
    assert params["mode"]["type"] == "enum" and params["mode"]["options"] == [
        "counts",
        "background",
        "excess",
    ]
    assert params["RA"]["unit"] == "deg" and params["runlist"]["required"] is True
    assert "obs_ids" in params and params["obs_ids"]["type"] == "string"  # Used ref: the param
    assert [r["pattern"] for r in written["results"]] == ["count_map.fits", "count_map.png"]
    assert (out / "gammapy_maps.sh").stat().st_mode & 0o111
    again = runner.invoke(app, ["types", "import", str(SAMPLE), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr

    # Served beside the examples, and run the OPUS way: form values, an upload, PHASE=RUN.
    jm = build(settings.with_(jobtypes=(*settings.jobtypes, str(out))))
    try:
        with app_client(jm) as client:
            created = client.post(
                "/uws/gammapy_maps",
                data={"RA": "83.63", "nxpix": "200", "mode": "excess", "PHASE": "RUN"},
                files={"runlist": ("runs.txt", b"23523\n23526\n", "text/plain")},
                follow_redirects=False,
            )
            assert created.status_code == 303, created.text
            url = created.headers["location"]
            wait_for(lambda: client.get(f"{url}/phase").text in ("COMPLETED", "ERROR"), 30)
            assert client.get(f"{url}/phase").text == "COMPLETED", client.get(f"{url}/error").text
            results = etree.fromstring(client.get(f"{url}/results").content)
            links = {r.get("id"): r.get(XLINK + "href") for r in results}
            assert {"count_map", "count_preview", "provjson"} <= set(links)
            fits = client.get(links["count_map"]).text
            assert "RA=83.63 Dec=-30.2255883 nxpix=200 nypix=400 binsz=0.02 mode=excess" in fits
            assert fits.endswith("23523\n23526\n")  # the uploaded input, read by $runlist
            assert client.get(links["count_preview"]).text == "preview 200x400\n"
            assert client.get(f"{url}/stdout").text.startswith("count map of runs 47802 47803")
            refused = client.post("/uws/gammapy_maps", data={"nxpix": "5000"})
            assert refused.status_code == 400 and "nxpix" in refused.text
    finally:
        jm.close()


def test_a_definition_without_a_script_needs_one(tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    start = text.index('<PARAM name="script"')
    bare = tmp_path / "bare.xml"
    bare.write_text(text[:start] + text[text.index("/>", start) + 2 :])
    refused = runner.invoke(app, ["types", "import", str(bare), "-o", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--script" in refused.stderr
    script = tmp_path / "run.sh"
    script.write_text("echo hi > count_map.fits\n")
    given = runner.invoke(
        app, ["types", "import", str(bare), "-o", str(tmp_path / "b"), "--script", str(script)]
    )
    assert given.exit_code == 0, given.output
    assert (tmp_path / "b" / "gammapy_maps.sh").read_text() == "echo hi > count_map.fits\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not xml", "is not XML"),
        (b"<VOTABLE/>", "not an OPUS job definition"),
        (b"<VOTABLE><RESOURCE type='meta' name='9'/></VOTABLE>", None),
        (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><VOTABLE>&e;</VOTABLE>', None),
    ],
)
def test_what_is_not_a_definition_is_one_error_line(
    tmp_path: Path, content: bytes, message: str | None
) -> None:
    path = tmp_path / "x.xml"
    path.write_bytes(content)
    result = runner.invoke(app, ["types", "import", str(path), "-o", str(tmp_path / "out")])
    if message is None:  # parsed without reading any file: a name made usable, or refused
        try:
            imported = parse(content)
        except JdlError:
            assert result.exit_code == 2
        else:
            assert "passwd" not in str(imported.document)
        return
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
