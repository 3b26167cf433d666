"""The Dagster UI, driven in a real browser the way a user drives it.

`dagster dev` runs on a free loopback port with a temporary DAGSTER_HOME and ISIC_DATA_DIR over the
demo mirror. Debian's Chromium (headless, through Playwright's ``executable_path``; no browser is
downloaded) opens the asset graph, clicks "Materialize all", follows the run to success on its run
page, and then checks what a user would look at: every asset node says "Materialized", the EDA
figures render on the eda_plots page (base64 PNGs in markdown metadata, behind "[Show Markdown]"),
and the merged_metadata balanced_dataset_buildable check (the small demo gives validation and test
fewer than 10 images of a class) shows as failed with its reason. Screenshots (``ui_*.png``) and the
``dagster dev`` log go to ``test-artifacts/`` at the repository root; with ISIC_PUBLISH_SCREENSHOTS=1
the cropped ones also become the README's pictures in ``docs/images/``.

`make test` installs what this needs (`make browser`: Debian's chromium, as root; Playwright from
the dev extras). Without /usr/bin/chromium the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from isic_assets.definitions import defs

from .demo_support import copy_demo_mirror
from .e2e_support import CHROMIUM, CHROMIUM_ARGS, REPO, DagsterDev, dagster_dev, make_dagster_home

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} is missing: `make browser` installs Debian's chromium when run as root "
               "(or: sudo apt-get install --no-install-recommends chromium)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is a dev extra: pip install -e '.[dev]'"
)

ARTIFACTS = REPO / "test-artifacts"
# The README's pictures of the UI (docs/images/, committed). Each is cropped to what it shows (the
# graph's nodes, the figures' dialog, the check's panel) at the browser's own scale, so its text stays
# readable, and stored with a 64-colour palette to stay well under 150 KB. A run of this test
# rewrites them only when ISIC_PUBLISH_SCREENSHOTS=1 asks (a test must not leave a clone modified);
# otherwise it checks that the committed pictures are there and small.
README_IMAGES = REPO / "docs" / "images"
README_SHOTS = {"ui_lineage_crop.png": "lineage.png", "ui_eda_plots_figures_crop.png": "eda_plots_figures.png",
                "ui_failed_check_crop.png": "failed_check.png"}
PUBLISH_ENV = "ISIC_PUBLISH_SCREENSHOTS"
MAX_README_IMAGE_BYTES = 150_000
MAX_README_IMAGE_WIDTH = 2000  # the graph crop is about 1900 px at the browser's scale; wider ones are shrunk
VIEWPORT = {"width": 2560, "height": 1440}  # wide enough for the nine-asset graph to fit with full asset nodes
SERVER_READY_S = 120
RUN_DONE_S = 420  # the whole demo graph takes about 25 s here; over 3 minutes was seen with the load at 10 on 2 cores
UI_S = 30  # any single page element
ASSETS = sorted(k.to_user_string() for k in defs.resolve_asset_graph().materializable_asset_keys)


def _graphql(server: DagsterDev, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{server.url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


def _run_status(server: DagsterDev, run_id: str) -> str:
    data = _graphql(server, "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
                    {"id": run_id})
    return data["runOrError"].get("status", data["runOrError"]["__typename"])


def _asset_node(page, name: str):
    """The asset's node in the lineage graph (an SVG foreignObject holding the node's card)."""
    return (page.locator("foreignObject")
            .filter(has=page.locator(f'[data-tooltip="{name}"]'))
            .filter(has_text="Latest event"))


def _open_expanded_graph(page, server: DagsterDev) -> None:
    """The global asset lineage with every group expanded, so each asset's node (and status) shows."""
    page.goto(f"{server.url}/asset-groups")
    page.get_by_role("button", name="Materialize all").wait_for()
    page.get_by_role("button", name="settings", exact=True).click()
    expand = page.get_by_role("menuitem", name="Expand all groups")
    collapse = page.get_by_role("menuitem", name="Collapse all groups")
    expand.or_(collapse).wait_for()
    if expand.is_visible():
        expand.click()
        page.reload()  # re-fit the now larger graph to the viewport (the choice is kept in localStorage)
    else:
        page.keyboard.press("Escape")
    for name in ASSETS:
        _asset_node(page, name).wait_for()


def _launch_materialize_all(page) -> str:
    """Click "Materialize all" (confirming a launchpad if one opens) and return the run's page URL."""
    page.get_by_role("button", name="Materialize all").click()
    toast = page.get_by_text(re.compile(r"^Launched run"))
    launch = re.compile(r"^(Launch run|Materialize)")
    dialog = page.get_by_role("dialog").filter(has=page.get_by_role("button", name=launch))
    toast.or_(dialog).first.wait_for(timeout=UI_S * 1000)
    if not toast.is_visible() and dialog.is_visible():
        # Config or partitions to confirm: take the defaults, as a user pressing the launch button does.
        dialog.get_by_role("button", name=launch).last.click()
        toast.wait_for(timeout=UI_S * 1000)
    view = page.locator("a[href^='/runs/']").filter(has_text=re.compile(r"^View$")).first
    href = view.get_attribute("href")
    assert href and href.startswith("/runs/"), f"the launch toast links to {href!r}"
    view.click()
    return href


def _wait_for_run(page, server: DagsterDev, run_id: str) -> str:
    """Wait on the run page until its status tag says Success, Failure or Canceled."""
    final = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$"))
    deadline = time.monotonic() + RUN_DONE_S
    while time.monotonic() < deadline:
        if final.count():
            return final.first.inner_text()
        status = _run_status(server, run_id)  # a second opinion, and it bounds a UI that stopped updating
        if status in ("FAILURE", "CANCELED"):
            page.wait_for_timeout(3000)  # let the page catch up before the screenshot
            break
        page.wait_for_timeout(1000)
    return final.first.inner_text() if final.count() else "(no final status shown)"


def _ui_flow(page, server: DagsterDev, data_root: str) -> None:
    # 1. The asset graph, before anything ran: every node says so.
    _open_expanded_graph(page, server)
    for name in ASSETS:
        sync_api.expect(_asset_node(page, name)).to_contain_text("Never materialized")

    # 2. "Materialize all", as a user clicks it; the toast's View link opens the run page.
    href = _launch_materialize_all(page)
    run_id = href.rsplit("/", 1)[-1]
    status = _wait_for_run(page, server, run_id)
    page.screenshot(path=ARTIFACTS / "ui_run.png")
    assert status == "Success", (
        f"run {run_id} shows {status!r} in the UI (GraphQL: {_run_status(server, run_id)}); "
        f"dagster dev log tail:\n{server.log_tail()}"
    )
    assert _run_status(server, run_id) == "SUCCESS"
    sync_api.expect(page.get_by_text(f"{len(ASSETS)} assets", exact=True)).to_be_visible()

    # 3. Back on the graph, every asset is materialized.
    page.locator("a[href='/asset-groups']").click()  # "Lineage" in the main navigation
    for name in ASSETS:
        node = _asset_node(page, name)
        sync_api.expect(node).not_to_contain_text("Never materialized", timeout=UI_S * 1000)
        sync_api.expect(node).not_to_contain_text("Materializing", timeout=UI_S * 1000)
        sync_api.expect(node).to_contain_text("Materialized")
        sync_api.expect(node.locator("a[href^='/runs/']").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "ui_asset_graph.png")
    _clipped_screenshot(page, [_asset_node(page, name) for name in ASSETS], ARTIFACTS / "ui_lineage_crop.png", pad=60)

    # 4. eda_plots: the figures' markdown holds base64 PNGs; they render as loaded <img> elements.
    page.goto(f"{server.url}/assets/eda_plots")
    page.get_by_text("[Show Markdown]").first.click()
    figures = page.get_by_role("dialog").locator("img[src^='data:image/png']")
    sync_api.expect(figures.first).to_be_visible(timeout=UI_S * 1000)
    with contextlib.suppress(sync_api.TimeoutError):  # decoding may lag; the assert below reports it
        page.wait_for_function(
            "() => { const imgs = [...document.querySelectorAll('[role=dialog] img[src^=\"data:image/png\"]')];"
            " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
            timeout=10_000)
    sizes = figures.evaluate_all(
        "imgs => imgs.map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}))")
    assert sizes and all(s["ok"] and s["w"] > 0 and s["h"] > 0 for s in sizes), sizes
    page.screenshot(path=ARTIFACTS / "ui_eda_plots_figures.png")
    # The README's picture: the dialog's first figures, the test's temporary data root shown as "data"
    # (a machine path says nothing to a reader; the README says so under the picture).
    page.evaluate(
        "root => { const walk = document.createTreeWalker(document.querySelector('[role=dialog]'),"
        " NodeFilter.SHOW_TEXT); for (let n = walk.nextNode(); n; n = walk.nextNode())"
        " n.nodeValue = n.nodeValue.split(root).join('data'); }", data_root)
    _clipped_screenshot(page, [page.get_by_role("dialog")], ARTIFACTS / "ui_eda_plots_figures_crop.png",
                        pad=0, max_size=(1500, 1000))
    page.keyboard.press("Escape")

    # 5. A failed check as a user finds it: merged_metadata > Checks > balanced_dataset_buildable.
    page.goto(f"{server.url}/assets/merged_metadata?view=checks")
    row = page.locator("[class*='checkRow']").filter(has=page.get_by_text("balanced_dataset_buildable", exact=True))
    sync_api.expect(row).to_contain_text("Failed", timeout=UI_S * 1000)  # the list shows it too
    for _ in range(3):  # a click can land while the virtualized list re-renders; the URL tells
        row.click()
        with contextlib.suppress(AssertionError):
            sync_api.expect(page).to_have_url(re.compile(r"checkDetail=balanced_dataset_buildable"), timeout=5000)
            break
    sync_api.expect(page).to_have_url(re.compile(r"checkDetail=balanced_dataset_buildable"))
    result = page.get_by_text("Evaluation result").locator("xpath=..")
    sync_api.expect(result).to_contain_text("Failed", timeout=UI_S * 1000)
    sync_api.expect(page.get_by_text("fewer than the 10 required", exact=False).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "ui_failed_check.png")
    # The check's name, its result and its reason: from the check list's row to the result's text.
    _clipped_screenshot(page, [row, result, page.get_by_text("fewer than the 10 required", exact=False).first],
                        ARTIFACTS / "ui_failed_check_crop.png", pad=24, max_size=(1500, 600))
    if os.environ.get(PUBLISH_ENV) == "1":
        publish_readme_images()
    check_readme_images()


def _clipped_screenshot(page, locators, path: Path, pad: int = 40,
                        max_size: tuple[int, int] = (100_000, 100_000)) -> None:
    """A screenshot of the smallest rectangle holding every locator's element, plus ``pad`` pixels,
    at most ``max_size`` (width, height) from its top left corner."""
    boxes = [box for locator in locators if (box := locator.bounding_box())]
    assert boxes, f"nothing to photograph for {path.name}"
    viewport = page.viewport_size
    left = max(0, min(b["x"] for b in boxes) - pad)
    top = max(0, min(b["y"] for b in boxes) - pad)
    right = min(viewport["width"], max(b["x"] + b["width"] for b in boxes) + pad)
    bottom = min(viewport["height"], max(b["y"] + b["height"] for b in boxes) + pad)
    width, height = min(right - left, max_size[0]), min(bottom - top, max_size[1])
    page.screenshot(path=path, clip={"x": left, "y": top, "width": width, "height": height})


def publish_readme_images(source: Path = ARTIFACTS, target: Path = README_IMAGES) -> list[Path]:
    """The README's pictures from this run's cropped screenshots: 64 colours, at most 2000 px wide."""
    from PIL import Image

    target.mkdir(parents=True, exist_ok=True)
    written = []
    for shot, name in README_SHOTS.items():
        with Image.open(source / shot) as image:
            picture = image.convert("RGB")
            if picture.width > MAX_README_IMAGE_WIDTH:
                height = round(picture.height * MAX_README_IMAGE_WIDTH / picture.width)
                picture = picture.resize((MAX_README_IMAGE_WIDTH, height), Image.Resampling.LANCZOS)
            picture.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(target / name, optimize=True)
        written.append(target / name)
    return written


def check_readme_images(target: Path = README_IMAGES) -> None:
    """Every picture the README shows is committed, referenced and small."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in README_SHOTS.values():
        image = target / name
        assert image.is_file(), f"{image} is missing: run this test with {PUBLISH_ENV}=1 and commit it"
        assert image.stat().st_size < MAX_README_IMAGE_BYTES, f"{image} is {image.stat().st_size} bytes"
        assert f"docs/images/{name}" in readme, f"README.md does not show docs/images/{name}"


def test_materialize_all_from_the_ui(tmp_path: Path, generated_demo_mirror: Path):
    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ARTIFACTS.glob("ui_*"):  # this test's files from an earlier run
        stale.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(make_dagster_home(tmp_path / "dagster_home")),
        "ISIC_DATA_DIR": str(tmp_path / "data"),
        "ISIC_SOURCES": "demo",  # the whole demo mirror: about 25 s for the graph, both classes for splits
    }
    copy_demo_mirror(generated_demo_mirror, tmp_path / "data")  # raw_zips takes the generator's fast path
    log_path = ARTIFACTS / "ui_dagster_dev.log"
    with dagster_dev(env, log_path, ready_timeout=SERVER_READY_S) as server, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium_profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport=VIEWPORT,
        )
        try:
            # Dagster greets a new instance with a "Join the Dagster community" dialog that opens a
            # second or more after a page loads and can close menus under the test's clicks. It is not
            # what this test is about: mark it seen, as dismissing it once would.
            _graphql(server, "mutation { setNuxSeen }", {})
            page = browser.new_page()
            page.set_default_timeout(UI_S * 1000)
            # expect() has its own 5 s default, too tight when the suite's other e2e tests load both cores.
            sync_api.expect.set_options(timeout=UI_S * 1000)
            # Should that dialog still show (a future Dagster), skip it whenever it covers the page.
            page.add_locator_handler(
                page.get_by_role("dialog").filter(has_text="Join the Dagster community"),
                lambda dialog: dialog.get_by_role("button", name="Skip").click(),
            )
            try:
                _ui_flow(page, server, env["ISIC_DATA_DIR"])
            except Exception as exc:
                with contextlib.suppress(Exception):  # a dead browser must not hide the real error
                    page.screenshot(path=ARTIFACTS / "ui_failure.png")
                raise AssertionError(
                    f"{type(exc).__name__}: {exc}\nscreenshot: {ARTIFACTS / 'ui_failure.png'}\n"
                    f"dagster dev log tail:\n{server.log_tail()}"
                ) from exc
        finally:
            browser.close()
