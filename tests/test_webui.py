"""LlamaBoard in a real browser: the `aira_moe` panel, a run started from it, its checkpoint in the chat and export tabs.

Headless Chromium (Debian's `chromium` package) driven by Playwright; the stock `llamafactory-cli webui`
serves the page and starts the run as a `llamafactory-cli train` process of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = REPO / "docs" / "webui_aira_moe.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webui(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("needs Chromium: `apt-get install chromium` (Debian), which `make test` does where it can")
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (tmp_path / "webui.log").open("w")  # a file: an unread pipe would block the server once full
    server = subprocess.Popen([str(BIN / "llamafactory-cli"), "webui"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert server.poll() is None, f"llamafactory-cli webui exited:\n{(tmp_path / 'webui.log').read_text()[-4000:]}"
        time.sleep(1)
    yield f"http://127.0.0.1:{port}/", tmp_path
    server.terminate()
    server.wait(timeout=30)
    log.close()


def visible(page, label: str, exact: bool = False):
    """The shown control of that label (the other tabs hold hidden ones of the same name)."""
    return page.get_by_label(label, exact=exact).filter(visible=True).first


def choose(page, label: str, value: str, exact: bool = True) -> None:
    box = visible(page, label, exact=exact)
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=True).click()
    page.wait_for_timeout(700)  # let the change events it fires settle


def wait_for_file(path_glob, root: Path, page, seconds: int = 300) -> Path:
    """The first file matching `path_glob`; on time-out the page's messages and the server's log say why."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(2)
    boxes = page.evaluate("() => [...document.querySelectorAll('textarea')].map(box => box.value).filter(Boolean)")
    log = (root / "webui.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"no {path_glob} under {root} after {seconds} s\npage: {boxes}\nserver log: {log}")


def test_the_aira_moe_panel_trains_and_its_checkpoint_loads_in_chat_and_export(webui, tiny_model_dir, medmcqa_dir):
    from playwright.sync_api import sync_playwright

    url, cwd = webui
    extra = {"optim": "adamw_torch", "max_steps": 2, "save_steps": 2, "bf16": False, "report_to": "none",
             "preprocessing_num_workers": 1, "max_samples": 16, "cutoff_len": 128}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_label("Finetuning method").wait_for(timeout=60000)
        panel = page.get_by_text("AIRA-MoE configurations")
        assert not panel.is_visible()  # LoRA is selected
        choose(page, "Model name", "Custom")
        visible(page, "Model path").fill(str(tiny_model_dir))
        choose(page, "Finetuning method", "aira_moe")
        panel.wait_for(state="visible")
        choose(page, "Chat template", "chatml")
        visible(page, "Data dir").fill(str(medmcqa_dir))
        visible(page, "Dataset", exact=True).click()  # its focus event reloads the choices: type after it
        page.wait_for_timeout(1500)
        page.keyboard.type("medmcqa_train")
        page.keyboard.press("Enter")
        visible(page, "num_A").fill("3")
        choose(page, "collaboration", "learned")
        visible(page, "use_activation_aware").check()
        visible(page, "awsvd_collect_steps").fill("2")
        page.get_by_text("Extra configurations").click()
        visible(page, "Extra arguments").fill(json.dumps(extra))
        page.get_by_role("button", name="Preview command").click()
        page.get_by_text("--collaboration learned").wait_for(timeout=30000)
        assert page.get_by_text("--num_A 3").is_visible() and page.get_by_text("--use_activation_aware True").is_visible()
        page.screenshot(path=str(cwd / "page.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": 1350})
        page.get_by_role("button", name="Start").click()
        saved = wait_for_file("saves/Custom/aira_moe/*/training_args.yaml", cwd, page)
        arguments = yaml.safe_load(saved.read_text())
        assert arguments["finetuning_type"] == "aira_moe" and arguments["num_A"] == 3
        assert arguments["collaboration"] == "learned" and arguments["use_activation_aware"] is True
        assert arguments["awsvd_collect_steps"] == 2 and arguments["lora_rank"] == 8 and arguments["lora_target"] == "all"
        adapter = wait_for_file("saves/Custom/aira_moe/*/adapter_config.json", cwd, page).parent
        assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "AIRA_MOE"
        # the run's end refreshes the checkpoint lists, clearing a choice made before it (seen on a loaded machine)
        page.get_by_text("Finished.").first.wait_for(timeout=180000)
        choose(page, "Checkpoint path", adapter.name, exact=False)
        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Load model").first.click()
        page.wait_for_function("text => [...document.querySelectorAll('textarea')].some(box => box.value.includes(text))",
                               arg="Model loaded, now you can chat with your model!", timeout=120000)
        page.get_by_role("tab", name="Export").click()
        choose(page, "Checkpoint path", adapter.name, exact=False)
        export_dir = visible(page, "Export dir")
        export_dir.fill(str(cwd / "exported"))
        export_dir.press("Tab")  # the change event reaches the server before the click
        page.wait_for_timeout(700)
        page.get_by_role("button", name="Export", exact=True).click()
        wait_for_file("exported/model.safetensors", cwd, page, seconds=240)
        choose(page, "Language", "zh")
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("AIRA-MoE 参数设置").wait_for(timeout=30000)
        assert page.get_by_text("协同策略").first.is_visible()
        browser.close()
    if os.environ.get("AIRA_MOE_UPDATE_SCREENSHOT"):  # the README's picture
        shutil.copy(cwd / "page.png", SCREENSHOT)
