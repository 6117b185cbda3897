"""The text tab's components (a diffusers pipeline's rule), created in page order and named in the UI."""

from __future__ import annotations

import gradio as gr

from olam_edit.rules.text.solve import DEFAULT_PRIOR_WEIGHT
from olam_edit.spaces_app.binding import UI
from olam_edit.spaces_app.text_rules import (
    MAX_GRID_SEEDS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    MODE_CHOICES,
    SIZE_STEP,
    TextSession,
    rules_markdown,
)
from olam_edit.spaces_app.text_studio import DEFAULT_STEPS

TEXT_HELP = ("Render a **source** prompt as a **destination** ('a rose' -> 'a blue rose'), replace it with any "
             "destination, or erase it towards a guide (a Stable Diffusion UNet; erasing needs preserve prompts). "
             "**Preserve** prompts keep their look. The before / after grid shows every *compare* prompt (default: "
             "the rule's sources and the preserve prompts) at fixed seeds.")


def text_tab(ui: UI, size: int) -> None:
    """The text tab's components; ``size`` is the pipeline's own image side (the render size it starts at)."""
    gr.Markdown(TEXT_HELP)
    with gr.Row():
        ui["text_mode"] = gr.Radio(MODE_CHOICES, value="edit", label="Rule", elem_id="text-mode")
    with gr.Row():
        ui["text_source"] = gr.Textbox("", label="Source", placeholder="a rose", elem_id="text-source")
        ui["text_destination"] = gr.Textbox("", label="Destination (the guide, to erase; empty: the empty prompt)",
                                            placeholder="a blue rose", elem_id="text-destination")
    with gr.Row():
        ui["text_preserve"] = gr.Textbox("", label="Preserve prompts (one a line)", lines=3,
                                         placeholder="a photo of a dog", elem_id="text-preserve")
        ui["text_compare"] = gr.Textbox("", label="Compare on (one prompt a line; default: the sources and preserve "
                                              "prompts)", lines=3, elem_id="text-compare")
    with gr.Accordion("Render and solve settings", open=False):
        with gr.Row():
            ui["text_steps"] = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps",
                                         elem_id="text-steps")
            ui["text_size"] = gr.Number(size, label="Image size (pixels)", precision=0, minimum=MIN_SIZE,
                                        maximum=MAX_SIZE, step=SIZE_STEP, elem_id="text-size")
            ui["text_seeds"] = gr.Slider(1, MAX_GRID_SEEDS, value=2, step=1, label="Seeds per prompt",
                                         elem_id="text-seeds")
            ui["text_prior_weight"] = gr.Number(DEFAULT_PRIOR_WEIGHT, label="Prior weight", minimum=0,
                                                info="the prior's weight in the soft fit", elem_id="text-prior")
    with gr.Row():
        ui["text_rewrite"] = gr.Button("Rewrite", variant="primary", elem_id="text-rewrite")
        ui["text_add_rule"] = gr.Button("Add rule to list", elem_id="text-add-rule")
        ui["text_rewrite_all"] = gr.Button("Rewrite all", variant="primary", elem_id="text-rewrite-all")
        ui["text_clear_rules"] = gr.Button("Clear rules", size="sm", elem_id="text-clear-rules")
    ui["text_rules"] = gr.Markdown(rules_markdown(TextSession()), elem_id="text-rules")
