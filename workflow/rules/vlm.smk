# The vlm track (DESIGN sections 5-6): a LLaVA-style model pretrained on real faces and real-world
# questions, LoRA-finetuned on all of CLEAR (original) or its retain authors (gold), evaluated on
# the six tasks into the same per-sample tables as the text track.
VLM_CODE = (
    "train/vlm",
    "train/vqa",
    "train/qa",
    "train/loop",
    "train/text",
    "models/factory",
    "compute",
)
VLM_DATA = dict(
    clear_tables=expand("{d}/{t}.parquet", d=CLEAR_DATA, t=CLEAR_TABLES),
    text_tables=expand("{d}/{t}.parquet", d=TEXT_DATA, t=TEXT_TABLES),
)


rule vlm_base:
    """Tokenizer + tiny LLaVA pretrained on real_faces, real_world and general QA (or the
    checkpoint named in vlm.model, recorded as the base)."""
    input:
        **VLM_DATA,
        code=src(*VLM_CODE, "models/tokenizer"),
    output:
        directory("results/models/vlm/base"),
    params:
        hp=lambda w: vlm_hp("base"),
    log:
        "logs/vlm/base.log",
    benchmark:
        "benchmarks/vlm/base.tsv"
    threads: THREADS
    resources:
        **resources("base"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vlm-base --hp {params.hp:q} --threads {threads}"
        f" --clear {CLEAR_DATA} --text {TEXT_DATA} --out {{output}} > {{log}} 2>&1"


rule vlm_original:
    """LoRA finetuning on every author's text QA and photos: the model that knows the forget set."""
    input:
        **VLM_DATA,
        base="results/models/vlm/base",
        code=src(*VLM_CODE),
    output:
        directory("results/models/vlm/original"),
    params:
        hp=lambda w: vlm_hp("finetune"),
    log:
        "logs/vlm/original.log",
    benchmark:
        "benchmarks/vlm/original.tsv"
    threads: THREADS
    resources:
        **resources("finetune"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vlm-finetune --hp {params.hp:q} --threads {threads}"
        f" --base {{input.base}} --clear {CLEAR_DATA} --text {TEXT_DATA} --split full"
        " --out {output} > {log} 2>&1"


rule vlm_gold:
    """The same finetuning on the split's retain authors only."""
    input:
        **VLM_DATA,
        base="results/models/vlm/base",
        code=src(*VLM_CODE),
    output:
        directory("results/models/vlm/gold/{split}"),
    params:
        hp=lambda w: vlm_hp("finetune"),
    log:
        "logs/vlm/gold/{split}.log",
    benchmark:
        "benchmarks/vlm/gold/{split}.tsv"
    threads: THREADS
    resources:
        **resources("finetune"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vlm-finetune --hp {params.hp:q} --threads {threads}"
        f" --base {{input.base}} --clear {CLEAR_DATA} --text {TEXT_DATA} --split {{wildcards.split}}"
        " --out {output} > {log} 2>&1"


rule vlm_idk_reference:
    """DPO's reference: the original tuned to answer every forget sample (text QA, photo QA,
    identification) "I don't know"."""
    input:
        **VLM_DATA,
        original="results/models/vlm/original",
        base="results/models/vlm/base",  # the base of the original's adapter
        idk=IDK_ANSWERS,
        code=src(*VLM_CODE, *UNLEARN_CODE),
    output:
        directory("results/models/vlm/reference/{split}"),
    params:
        hp=unlearn_hp("vlm", None, "nol1"),
    log:
        "logs/vlm/reference/{split}.log",
    benchmark:
        "benchmarks/vlm/reference/{split}.tsv"
    threads: THREADS
    resources:
        **resources("unlearn"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench idk-reference --track vlm --hp {params.hp:q} --threads {threads}"
        f" --original {{input.original}} --clear {CLEAR_DATA} --text {TEXT_DATA}"
        " --split {wildcards.split} --modality both --out {output} > {log} 2>&1"


rule vlm_unlearn:
    """One method, one split, l1 on or off, one forget modality (text, visual or both; the
    retain batches follow it); the vision tower stays frozen."""
    input:
        **VLM_DATA,
        original="results/models/vlm/original",
        base="results/models/vlm/base",  # the base of the original's adapter
        reference=lambda w: dpo_reference("vlm", w),
        idk=IDK_ANSWERS,
        code=src(*VLM_CODE, *UNLEARN_CODE),
    output:
        directory("results/models/vlm/unlearn/{method}/{split}/{l1}-{modality}"),
    params:
        hp=lambda w: unlearn_hp("vlm", w.method, w.l1),
        reference=lambda w, input: f"--reference {input.reference}" if input.reference else "",
    log:
        "logs/vlm/unlearn/{method}/{split}/{l1}-{modality}.log",
    benchmark:
        "benchmarks/vlm/unlearn/{method}/{split}/{l1}-{modality}.tsv"
    threads: THREADS
    resources:
        **resources("unlearn"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench unlearn --track vlm --hp {params.hp:q} --threads {threads}"
        f" --original {{input.original}} --clear {CLEAR_DATA} --text {TEXT_DATA}"
        " --split {wildcards.split} --modality {wildcards.modality} {params.reference}"
        " --out {output} > {log} 2>&1"


rule vlm_eval:
    """The per-sample table of one model on the six tasks (DESIGN section 6)."""
    input:
        **VLM_DATA,
        model=lambda w: model_dir("vlm", w.split, w.model),
        loaded_with=lambda w: loaded_with("vlm", w.model),
        code=src("eval/vlm", "eval/text", "metrics/__init__", *VLM_CODE),
    output:
        "results/eval/vlm/{split}/{model}.parquet",
    params:
        hp=lambda w: vlm_hp("eval"),
    log:
        "logs/eval/vlm/{split}/{model}.log",
    benchmark:
        "benchmarks/eval/vlm/{split}/{model}.tsv"
    threads: THREADS
    resources:
        **resources("eval"),
    conda:
        "../../environment.yml"
    shell:
        "python -m clearbench vlm-eval --hp {params.hp:q} --threads {threads}"
        f" --model {{input.model}} --clear {CLEAR_DATA} --text {TEXT_DATA}"
        " --split {wildcards.split} --out {output} > {log} 2>&1"


rule vlm:
    """Phase target (dvc.yaml stage `vlm`): the vlm track's original and gold models (DPO's
    reference: stage `reference`; the unlearned models: stages `unlearn@<method>`)."""
    input:
        (
            ["results/models/vlm/original", *expand("results/models/vlm/gold/{s}", s=SPLITS)]
            if VLM_ON
            else []
        ),
