"""report.html in a real headless Chromium (slow tier; needs Debian's `chromium` package): every image
loads and nothing overflows the page width."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from robench.cli import cli
from robench.evaluate import EvalConfig, evaluate
from robench.sources import from_run

PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const report = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    wide: Array.from(document.querySelectorAll("body *")).filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.tagName).slice(0, 5),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = "PROBE" + JSON.stringify(report) + "PROBE";
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 800])
def test_report_html_renders_in_chromium(trained_run, tmp_path, width):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs a chromium binary (Debian: apt install chromium)")
    csv = tmp_path / "r.csv"
    evaluate([from_run(trained_run)], EvalConfig(attacks="fgsm,pgd", eps=(0.0, 0.1, 0.2), n=50, device="cpu"),
             out=csv, show_progress=False)  # fmt: skip
    result = CliRunner().invoke(cli, ["report", str(csv), "--out", str(tmp_path / "rep"), "--format", "html"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep/report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
                           "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    found = re.search(r"PROBE(\{.*?\})PROBE", done.stdout)
    assert found, done.stderr[-2000:]
    report = json.loads(found.group(1))
    assert report["images"] >= 3 and report["broken"] == 0, report
    assert report["scrollWidth"] <= report["innerWidth"] and not report["wide"], report
    # the trust section renders: its heading, and what robench measured on the model before attacking it
    assert re.search(r"<h2[^>]*>Can this evaluation be trusted\?</h2>", done.stdout), done.stdout[:3000]
    assert "deterministic outputs, 0% zero input gradients, logits, 10 classes" in done.stdout
