"""hopaudit.timeline over a real training run: a tiny GPT-2 trained by transformers' Trainer
with AuditCallback every 6 steps, shown in Chromium; the slider (from the keyboard) moves the
histogram and the scatter to another step; ``hopaudit timeline`` writes a report that opens."""

from __future__ import annotations

import shutil
from pydoc_data.topics import topics

import pytest
import torch
from browser_helpers import non_background, open_counting_webgl, save_screenshot

import hopaudit

SEQ = 32
STEPS = [6, 12, 18, 24, 30]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hopaudit.training import AuditCallback
    from hopaudit.zoo.tinygpt import _token_stream, train_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        docs = [topics[k] for k in sorted(topics)][:8]
        tok = train_tokenizer(docs, vocab_size=400, model_max_length=SEQ)
        stream = torch.from_numpy(_token_stream(tok, docs))
        rows = stream[: len(stream) // SEQ * SEQ].view(-1, SEQ)
        train_rows, eval_rows = rows[60:], rows[:60]
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=len(tok),
            n_positions=SEQ,
            n_embd=32,
            n_layer=2,
            n_head=2,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        out = tmp_path_factory.mktemp("run")
        args = TrainingArguments(
            output_dir=str(out),
            max_steps=STEPS[-1],
            save_strategy="no",
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        # held-out text from other topics, and extraction: every step carries its evidence
        held_docs = [topics[k] for k in sorted(topics)][8:12]
        held_stream = torch.from_numpy(_token_stream(tok, held_docs))
        held_rows = held_stream[: len(held_stream) // SEQ * SEQ].view(-1, SEQ)[:30]
        evidence = dict(heldout=held_rows, extraction={"prefix": 16, "suffix": 16})
        callback = AuditCallback(eval_rows, every=6, max_length=SEQ, umap_layers=[], **evidence)
        data = [{"input_ids": r, "labels": r} for r in train_rows]
        Trainer(
            model=GPT2LMHeadModel(config),
            args=args,
            train_dataset=data,
            processing_class=tok,
            callbacks=[callback],
        ).train()
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def timeline(run_dir):
    return hopaudit.timeline(run_dir)


@pytest.fixture(scope="module")
def timeline_path(timeline, tmp_path_factory):
    return timeline.to_html(tmp_path_factory.mktemp("timeline") / "timeline.html")


def test_the_run_is_read_in_step_order(timeline):
    assert timeline.steps == STEPS
    assert timeline.alignment.method.tolist() == ["first", "init", "init", "init", "init"]
    # training lowers the loss the audits measure
    ce = timeline.table.cross_entropy.to_numpy()
    assert ce[-1] < ce[0]


def test_every_panel_draws_and_the_slider_moves_the_histogram(browser, timeline_path):
    ctx, page, errors = open_counting_webgl(browser, timeline_path)
    try:
        for name in (
            "timeline-slider",
            "timeline-radii",
            "timeline-loss",
            "timeline-distances",
            "timeline-basins",
        ):
            assert page.locator(f'[data-panel="{name}"]').get_attribute("data-ready") == "true"
        root = page.locator(".hopaudit")
        assert root.get_attribute("data-step") == str(STEPS[-1])
        canvas = page.locator('[data-panel="timeline-basins"] canvas')
        assert non_background(canvas.screenshot()) > 100
        save_screenshot(page, "timeline.png")

        hist = page.locator('[data-panel="timeline-distances"] .ha-hist')
        before_hist = hist.inner_html()
        before_scatter = canvas.screenshot()
        slider = page.locator('[data-panel="timeline-slider"] input[type="range"]')
        slider.focus()
        page.keyboard.press("Home")
        page.wait_for_function(f"document.querySelector('.hopaudit').dataset.step === '{STEPS[0]}'")
        page.wait_for_selector('[data-panel="timeline-basins"][data-ready="true"]')
        page.wait_for_timeout(300)
        assert hist.inner_html() != before_hist
        assert canvas.screenshot() != before_scatter
        assert "step 6" in page.locator('[data-panel="timeline-slider"]').inner_text()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"document.querySelector('.hopaudit').dataset.step === '{STEPS[1]}'")
        assert page.locator('[data-panel="timeline-radii"] .ha-chart').get_attribute(
            "data-step"
        ) == str(STEPS[1])
        # the view state is kept in the model (saved with the notebook)
        assert page.evaluate("window.hopauditModel.get('step_index')") == 1
        # one WebGL context however often the step changes
        assert page.evaluate("window.__webglContexts") == 1
        assert errors == []
    finally:
        ctx.close()


def test_evidence_is_drawn_on_the_step_axis(browser, timeline, timeline_path):
    """The audits were made with held-out text and extraction: a panel draws their extraction
    rate and loss AUROC over the same steps as r̂/r*, and follows the slider."""
    evidence = timeline.evidence.set_index("step")
    ctx, page, errors = open_counting_webgl(browser, timeline_path)
    try:
        panel = page.locator('[data-panel="timeline-evidence"]')
        assert panel.get_attribute("data-ready") == "true"
        chart = panel.locator(".ha-chart")
        last = evidence.loc[STEPS[-1]]
        assert float(chart.get_attribute("data-auroc-loss")) == pytest.approx(last["auroc_loss"])
        assert float(chart.get_attribute("data-extraction-rate")) == pytest.approx(
            last["extraction_rate"]
        )
        # one dot per series and step: three series (members, held-out extraction, AUROC)
        assert panel.locator('svg g[aria-label="dot"] circle').count() == 3 * len(STEPS)
        ticks = panel.locator('svg g[aria-label="x-axis tick label"] text').all_inner_texts()
        radii_ticks = page.locator(
            '[data-panel="timeline-radii"] svg g[aria-label="x-axis tick label"] text'
        ).all_inner_texts()
        assert ticks == radii_ticks  # the same step axis
        page.locator('[data-panel="timeline-slider"] input[type="range"]').focus()
        page.keyboard.press("Home")
        page.wait_for_function(
            "document.querySelector('[data-panel=timeline-evidence] .ha-chart').dataset.step"
            f" === '{STEPS[0]}'"
        )
        first = evidence.loc[STEPS[0]]
        assert float(chart.get_attribute("data-auroc-loss")) == pytest.approx(first["auroc_loss"])
        assert errors == []
    finally:
        ctx.close()


def test_heatmap_view(browser, timeline_path):
    ctx, page, errors = open_counting_webgl(browser, timeline_path)
    try:
        page.locator('[data-panel="timeline-radii"] select').select_option("heatmap")
        cells = page.locator('[data-panel="timeline-radii"] svg g[aria-label="cell"] rect')
        assert cells.count() >= 3 * len(STEPS)  # 2 blocks + final, every step
        assert errors == []
    finally:
        ctx.close()


def test_cli_timeline_writes_a_report_that_opens(browser, run_dir, tmp_path):
    from hopaudit.cli import main

    out = tmp_path / "cli-timeline.html"
    assert main(["timeline", str(run_dir / "hopaudit"), "--out", str(out)]) == 0
    ctx, page, errors = open_counting_webgl(browser, out)
    try:
        assert page.locator('[data-panel="timeline-slider"] input').get_attribute("max") == "4"
        assert errors == []
    finally:
        ctx.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["timeline", str(empty), "--out", str(out)]) == 1
    shutil.rmtree(empty)
