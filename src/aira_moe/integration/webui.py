"""The `aira_moe` panel of LlamaBoard (`llamafactory-cli webui`), built from `AiraMoeConfig`'s declarations.

The panel sits in the Train tab and shows only when the finetuning method is `aira_moe`; each of
our options is one control, labelled in English and Chinese. Rank, alpha, dropout, targets and
rsLoRA are the LoRA panel's own controls, which the runner passes on for `aira_moe` too.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import fields
from typing import Any, Optional

from ..tuner.config import AiraMoeConfig
from .arguments import OUR_OPTIONS

PANEL = "aira_moe_tab"
FINETUNING_TYPE = "aira_moe"
# the LoRA panel's controls that apply to aira_moe: LLaMA-Factory argument -> LlamaBoard element id
LORA_CONTROLS = {
    "lora_rank": "train.lora_rank",
    "lora_alpha": "train.lora_alpha",
    "lora_dropout": "train.lora_dropout",
    "use_rslora": "train.use_rslora",
    "additional_target": "train.additional_target",
}
ZH = {
    PANEL: ("AIRA-MoE 参数设置", "多 A / 多 B 协同低秩适配；秩、alpha、dropout、目标模块和 rsLoRA 取自 LoRA 参数设置。"),
    "num_A": ("A 矩阵数量", "每个适配层的 A 矩阵（输入侧专家）数量，建议 2-4。"),
    "num_B": ("B 矩阵数量", "每个适配层的 B 矩阵（输出侧专家）数量，建议 3-4。"),
    "collaboration": ("协同策略", "fully：全部组合，等价于一个秩为 r 的适配器；heuristic：固定配对（需 num_A <= num_B）；"
                      "learned：可学习的 Ω。后两者的专家可提供 min(num_A, num_B) x r 个方向。"),
    "adapter_compute_dtype": ("适配器计算精度", "input：按激活值精度计算（bf16 模型上为 bf16）；parameter：按权重精度计算。"),
    "bank_lr_scaling": ("分组学习率", "每组专家的学习率除以共享同一梯度的专家数，使 learning_rate 与 LoRA 含义相同"
                        "（fully 即等同于秩为 r 的 LoRA）；false：所有专家使用完整学习率。"),
    "use_activation_aware": ("激活感知加权", "用校准得到的静态通道权重缩放适配器。"),
    "activation_aware_mode": ("加权位置", "inps：缩放输入通道（来自 rms_in）；outps：缩放输出通道（来自 rms_out）。"),
    "activation_normalize": ("权重归一化", "将激活权重裁剪到 [0.1, 10] 并重新缩放到均值 1。"),
    "use_layer_wise_rank": ("逐层秩分配", "根据离群值统计（LOD）为每个解码块分配秩。"),
    "rank_budget": ("秩预算", "逐层分配时各解码块每个专家秩之和（例如 128-256）；0 表示未设置。"),
    "theta_type": ("块重要性", "lod：离群值比例；uniform：均匀（用于消融）。"),
    "objective_function": ("分配目标", "log：最大化 Σ θ_l log r_l。"),
    "min_rank": ("最小秩", "每个块的最小秩（建议 2-4）。"),
    "max_rank": ("最大秩", "每个块的最大秩（建议 32-64）。"),
    "lod_threshold_M": ("离群阈值 M", "得分超过块均值 M 倍即视为离群（建议 1.8-2.5）。"),
    "use_awsvd_init": ("AwSVD 初始化", "用激活加权 SVD 初始化专家（heuristic / learned 下每组配对各取一段奇异方向），"
                       "并从冻结权重中减去其乘积 P0。"),
    "awsvd_lr_ratio": ("AwSVD 学习率系数", "启用 AwSVD 初始化与分组学习率时，各专家组的学习率再乘以此系数（SVD 起点的因子从第一步起就较大，"
                       "一步 Adam 更新对乘积的改变大于 LoRA 的零起点）；1.0 为不修正。"),
    "awsvd_collect_steps": ("校准批次数", "校准所用批次数（训练集的随机抽样，每个数据集按比例），三种技术共用（建议 100-200）。"),
}


def locales() -> dict[str, dict[str, dict[str, str]]]:
    """LlamaBoard's locale entries for the panel and each control: English from the help texts, Chinese above."""
    helps = {f.name: f.metadata["help"] for f in fields(AiraMoeConfig)}
    entries = {PANEL: {"en": {"label": "AIRA-MoE configurations"}, "zh": {"label": ZH[PANEL][0]}}}
    for name in OUR_OPTIONS:
        entries[name] = {"en": {"label": name, "info": helps[name]}, "zh": {"label": ZH[name][0], "info": ZH[name][1]}}
    return entries


@functools.cache
def declared_types() -> dict[str, Any]:
    """Each config field's declared type: the panel's controls and the values read back from them follow it."""
    return typing.get_type_hints(AiraMoeConfig)


def control(name: str) -> Any:
    """The gradio control of one option, by its declared type and default."""
    import gradio as gr

    hint = declared_types()[name]
    default = next(f.default for f in fields(AiraMoeConfig) if f.name == name)
    if hint is bool:
        return gr.Checkbox(value=default)
    if typing.get_origin(hint) is typing.Literal:
        return gr.Dropdown(choices=list(typing.get_args(hint)), value=default)
    if hint is float:
        return gr.Number(value=default)
    return gr.Number(value=default or 0, precision=0)


def create_panel() -> dict[str, Any]:
    """The accordion (hidden until `aira_moe` is chosen) and one control per option, in declaration order."""
    import gradio as gr

    with gr.Accordion(open=True, visible=False) as panel:
        controls = {}
        for start in range(0, len(OUR_OPTIONS), 6):
            with gr.Row():
                for name in OUR_OPTIONS[start : start + 6]:
                    controls[name] = control(name)
    return {PANEL: panel, **controls}


def declared_value(name: str, value: Any) -> Any:
    """A panel value as its field declares it: gradio's numbers come back as floats, an unset optional int as 0."""
    hint = declared_types()[name]
    if hint is int:
        return int(value)
    if hint is float:
        return float(value)
    if hint == Optional[int]:
        return int(value) or None
    return value


def option_values(get: Any) -> dict[str, Any]:
    """The run's arguments from the panel (`get(element id)`), with the LoRA panel's controls that apply."""
    values = {name: declared_value(name, get(f"train.{name}")) for name in OUR_OPTIONS}
    values.update({argument: get(element) for argument, element in LORA_CONTROLS.items()})
    values["lora_target"] = get("train.lora_target") or "all"
    values["additional_target"] = values["additional_target"] or None
    return values
