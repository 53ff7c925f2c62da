"""The option declarations (library/options) as users meet them: every sd-scripts option parses, every option has
help, a run configured on the command line, in a --config_file and in an --output_config file is the same run,
refused options stop with one line, ignored ones are noted, bad values and unknown options get one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.options.parse import build_parser, parse_training_args  # noqa: E402
from library.options.spec import IGNORED, IMPLEMENTED, REFUSED  # noqa: E402
from library.options.train import TrainConfig, train_options  # noqa: E402

# sd-scripts 48d368fa: the options of train_network.py's parser (facts: names, and a value each accepts)
SD_SCRIPTS_FLAGS = """console_log_simple v2 v_parameterization cache_info shuffle_caption enable_wildcard color_aug flip_aug
random_crop debug_dataset cache_latents cache_latents_to_disk skip_cache_check enable_bucket bucket_no_upscale
alpha_mask save_state_to_huggingface resume_from_huggingface async_upload save_state save_state_on_train_end
mem_eff_attn torch_compile xformers sdpa persistent_data_loader_workers gradient_checkpointing full_fp16
full_bf16 fp8_base ddp_gradient_as_bucket_view ddp_static_graph log_config noise_offset_random_strength
ip_noise_gamma_random_strength zero_terminal_snr lowram highvram sample_at_first output_config masked_loss
deepspeed zero3_init_flag zero3_save_16bit_model fp16_master_weights_and_gradients use_8bit_adam
use_lion_optimizer fused_backward_pass scale_v_pred_loss_like_noise_pred debiased_estimation_loss
weighted_captions cpu_offload_checkpointing no_metadata fp8_base_unet network_train_unet_only
network_train_text_encoder_only dim_from_weights no_half_vae skip_until_initial_step
disable_mmap_load_safetensors cache_text_encoder_outputs cache_text_encoder_outputs_to_disk""".split()
SD_SCRIPTS_VALUED = dict(item.split("=") for item in """
console_log_level=DEBUG console_log_file=x pretrained_model_name_or_path=x tokenizer_cache_dir=x metadata_title=x
metadata_author=x metadata_description=x metadata_license=x metadata_tags=x metadata_usage_hint=x
metadata_thumbnail=x metadata_merged_from=x metadata_trigger_phrase=x metadata_preprocessor=x
metadata_is_negative_embedding=x train_data_dir=x caption_separator=x caption_extension=x caption_extention=x
keep_tokens=2 keep_tokens_separator=x secondary_separator=x caption_prefix=x caption_suffix=x face_crop_aug_range=x
resolution=x vae_batch_size=2 min_bucket_reso=2 max_bucket_reso=2 bucket_reso_steps=2 resize_interpolation=lanczos
token_warmup_min=2 token_warmup_step=0.5 dataset_class=x caption_dropout_rate=0.5 caption_dropout_every_n_epochs=2
caption_tag_dropout_rate=0.5 reg_data_dir=x in_json=x dataset_repeats=2 output_dir=x output_name=x
huggingface_repo_id=x huggingface_repo_type=x huggingface_path_in_repo=x huggingface_token=x
huggingface_repo_visibility=x save_precision=float save_every_n_epochs=2 save_every_n_steps=2 save_n_epoch_ratio=2
save_last_n_epochs=2 save_last_n_epochs_state=2 save_last_n_steps=2 save_last_n_steps_state=2 resume=x
train_batch_size=2 max_token_length=150 dynamo_backend=eager vae=x max_train_steps=2 max_train_epochs=2
max_data_loader_n_workers=2 seed=2 gradient_accumulation_steps=2 mixed_precision=no ddp_timeout=2 clip_skip=2
logging_dir=x log_with=tensorboard log_prefix=x log_tracker_name=x wandb_run_name=x log_tracker_config=x
wandb_api_key=x noise_offset=0.5 multires_noise_iterations=2 ip_noise_gamma=0.5 multires_noise_discount=0.5
adaptive_noise_scale=0.5 min_timestep=2 max_timestep=2 loss_type=l1 huber_schedule=constant huber_c=0.5
huber_scale=0.5 sample_every_n_steps=2 sample_every_n_epochs=2 sample_prompts=x sample_sampler=ddim config_file=x
prior_loss_weight=0.5 conditioning_data_dir=x zero_stage=1 offload_optimizer_device=cpu
offload_optimizer_nvme_path=x offload_param_device=cpu offload_param_nvme_path=x optimizer_type=x learning_rate=0.5
max_grad_norm=0.5 optimizer_args=x lr_scheduler_type=x lr_scheduler_args=x lr_scheduler=x lr_warmup_steps=0.1
lr_decay_steps=0.1 lr_scheduler_num_cycles=2 lr_scheduler_power=0.5 lr_scheduler_timescale=2
lr_scheduler_min_lr_ratio=0.5 dataset_config=x min_snr_gamma=0.5 v_pred_like_loss=0.5 save_model_as=ckpt unet_lr=0.5
text_encoder_lr=0.5 network_weights=x network_module=x network_dim=2 network_alpha=0.5 network_dropout=0.5
network_args=x training_comment=x scale_weight_norms=0.5 base_weights=x base_weights_multiplier=0.5 initial_epoch=2
initial_step=2 validation_seed=2 validation_split=0.5 validate_every_n_steps=2 validate_every_n_epochs=2
max_validation_steps=2""".split())
# sdxl_train_network.py adds these to train_network.py's parser
SD_SCRIPTS_SDXL_FLAGS = ["disable_mmap_load_safetensors", "cache_text_encoder_outputs",
                         "cache_text_encoder_outputs_to_disk"]
SCRIPTS = ("train_network", "sdxl_train_network", "gen_img_diffusers")


@pytest.mark.parametrize("script", ["train_network", "sdxl_train_network"])
def test_every_sd_scripts_option_parses(script):
    parser = build_parser(script)
    flags = SD_SCRIPTS_FLAGS + (SD_SCRIPTS_SDXL_FLAGS if script == "sdxl_train_network" else [])
    for name in flags:
        assert getattr(parser.parse_args([f"--{name}"]), name) is True, name
    for name, value in SD_SCRIPTS_VALUED.items():
        ns = parser.parse_args([f"--{name}", value])
        dest = "caption_extension" if name == "caption_extention" else name
        assert getattr(ns, dest) not in (None, []), name
    statuses = {o.name: o.status_in(script)[0] for o in train_options(script)}
    assert set(statuses.values()) == {IMPLEMENTED, REFUSED, IGNORED}
    assert (set(flags) | set(SD_SCRIPTS_VALUED)) - {"caption_extention"} <= set(statuses)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_has_help(script):
    parser = build_parser(script)
    actions = [a for a in parser._actions if a.option_strings]
    assert len(actions) > 20
    for action in actions:
        assert action.help and action.help.strip(), action.option_strings


def test_help_marks_refused_and_ignored():
    text = build_parser("train_network").format_help()
    line = " ".join(text.split())  # argparse wraps help text
    assert "--deepspeed train with DeepSpeed (REFUSED here: DeepSpeed is not supported" in line
    assert "--highvram keep everything on the GPU between steps (ignored here:" in line
    sdxl = " ".join(build_parser("sdxl_train_network").format_help().split())
    assert "--cache_text_encoder_outputs SDXL: encode every caption once" in sdxl
    assert "REFUSED here: text-encoder" not in sdxl


def test_help_is_fast_no_heavy_imports():
    """`-h` must not wait for torch/diffusers/transformers: importing the scripts imports none of them."""
    code = ("import sys; sys.path.insert(0, '.'); import train_network, gen_img_diffusers; "
            "from library.options.parse import build_parser; build_parser('gen_img_diffusers').format_help(); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    out = subprocess.run([sys.executable, "train_network.py", "-h"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--network_dim" in out.stdout



def _command_line_scripts() -> list[str]:
    found = [*ROOT.glob("*.py"), *ROOT.glob("networks/*.py"), *ROOT.glob("tools/*.py")]
    return sorted(p.relative_to(ROOT).as_posix() for p in found if "__main__" in p.read_text(encoding="utf-8"))


def test_every_script_answers_help_without_heavy_imports():
    """`-h` of every script (training, generation, networks/ and tools/) prints its help and has imported none of
    torch, diffusers or transformers: that is what keeps it under 2 s."""
    scripts = _command_line_scripts()
    assert {"train_network.py", "sdxl_train_network.py", "networks/convert_lora.py"} <= set(scripts)
    code = ("import runpy, sys, io, contextlib\n"
            "for path in sys.argv[1:]:\n"
            "    sys.argv = [path, '-h']; out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try: runpy.run_path(path, run_name='__main__')\n"
            "        except SystemExit: pass\n"
            "    heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "    print(path, 'usage' in out.getvalue(), heavy)\n")
    for script in scripts:  # one process each: an earlier script's imports must not hide a later one's
        out = subprocess.run([sys.executable, "-c", code, script], cwd=ROOT, capture_output=True, text=True)
        assert out.stdout.strip() == f"{script} True []", (script, out.stdout, out.stderr[-2000:])


# ---- one run, configured three ways --------------------------------------------------------------------------
RUN = ["--pretrained_model_name_or_path", "model.safetensors", "--train_data_dir", "data", "--resolution", "512,768",
       "--network_dim", "16", "--network_alpha", "8", "--network_args", "conv_dim=4", "conv_alpha=2",
       "--text_encoder_lr", "1e-5", "--unet_lr", "1e-4", "--lr_warmup_steps", "5%", "--lr_decay_steps", "0.1",
       "--shuffle_caption", "--keep_tokens", "2", "--caption_extension", ".txt", "--max_token_length", "225",
       "--mixed_precision", "bf16", "--optimizer_args", "betas=0.9,0.99", "weight_decay=0.01", "--seed", "7",
       "--use_8bit_adam", "--cache_latents_to_disk", "--sample_sampler", "k_euler_a", "--enable_bucket"]


def test_command_line_config_file_and_output_config_agree(tmp_path):
    from_cli = parse_training_args(RUN)
    assert isinstance(from_cli, TrainConfig)
    assert from_cli.network_args == ["conv_dim=4", "conv_alpha=2"] and from_cli.text_encoder_lr == [1e-5]
    assert from_cli.lr_warmup_steps == "5%" and from_cli.lr_decay_steps == 0.1
    assert from_cli.optimizer_type == "AdamW8bit" and from_cli.cache_latents  # aliases resolved

    written = tmp_path / "written.toml"
    assert parse_training_args(["--config_file", str(written), "--output_config", *RUN]) is None
    from_written = parse_training_args(["--config_file", str(written)])

    hand = tmp_path / "hand.toml"  # as a user writes it: sd-scripts' sections, TOML types
    hand.write_text("""[model_arguments]
pretrained_model_name_or_path = "model.safetensors"
max_token_length = 225
[dataset_arguments]
train_data_dir = "data"
resolution = "512,768"
shuffle_caption = true
keep_tokens = 2
caption_extension = ".txt"
enable_bucket = true
cache_latents_to_disk = true
[network_arguments]
network_dim = 16
network_alpha = 8
network_args = ["conv_dim=4", "conv_alpha=2"]
[optimizer_arguments]
text_encoder_lr = 1e-5
unet_lr = 1e-4
lr_warmup_steps = "5%"
lr_decay_steps = 0.1
optimizer_args = ["betas=0.9,0.99", "weight_decay=0.01"]
use_8bit_adam = true
[training_arguments]
mixed_precision = "bf16"
seed = 7
sample_sampler = "k_euler_a"
""", encoding="utf-8")
    from_file = parse_training_args(["--config_file", str(hand)])
    assert from_cli == from_written == from_file
    assert parse_training_args(["--config_file", str(hand), "--seed", "8"]).seed == 8  # the command line wins


def test_output_config_never_overwrites(tmp_path, capsys):
    cfg = tmp_path / "mine.toml"
    cfg.write_text("network_dim = 32\n", encoding="utf-8")
    assert run_main(train_network.main, ["--config_file", str(cfg), "--output_config", "--network_dim", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --config_file") and "already exists" in err[0]
    assert cfg.read_text(encoding="utf-8") == "network_dim = 32\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "mine.toml"]  # no temporary file left behind


# ---- refused, ignored, bad values, unknown options ------------------------------------------------------------
def one_error(capsys, argv: list[str]) -> str:
    assert run_main(train_network.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, expected", [
    (["--deepspeed"], "error: --deepspeed: DeepSpeed is not supported"),
    (["--validation_split", "1"], "error: --validation_split 1.0: must be at least 0 and below 1"),
    (["--weighted_captions", "--cache_text_encoder_outputs"],
     "error: --weighted_captions and --cache_text_encoder_outputs exclude each other"),
    (["--fused_backward_pass"], "error: --fused_backward_pass: the fused backward pass is not supported"),
    (["--huggingface_repo_id", "me/lora"], "error: --huggingface_repo_id: this toolkit is offline"),
])
def test_refused_options_stop_with_one_line(capsys, argv, expected):
    assert one_error(capsys, argv).startswith(expected)


def test_refused_option_in_config_file_and_default_value_pass(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[x]\nfused_backward_pass = true\n", encoding="utf-8")
    assert one_error(capsys, ["--config_file", str(cfg)]).startswith("error: --fused_backward_pass: the fused")
    assert parse_training_args(["--validation_split", "0", "--zero_stage", "2"]) is not None  # defaults: fine


def test_ignored_options_are_noted(capsys):
    cfg = parse_training_args(["--highvram", "--ddp_timeout", "30", "--log_with", "tensorboard"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "ignored" in ln]
    assert lines == ["INFO: --highvram: ignored (memory is managed by PyTorch here)",
                     "INFO: --ddp_timeout: ignored (accelerate's default timeout is used)"]
    assert cfg.highvram and cfg.ddp_timeout == 30


@pytest.mark.parametrize("argv, expected", [
    (["--max_train_steps", "0"], "error: --max_train_steps 0: must be greater than 0"),
    (["--network_dim", "0"], "error: --network_dim 0: must be greater than 0"),
    (["--network_dim", "-4"], "error: --network_dim -4: must be greater than 0"),
    (["--learning_rate", "-1"], "error: --learning_rate -1.0: must not be negative"),
    (["--text_encoder_lr", "1e-4", "-0.0001"], "error: --text_encoder_lr 0.0001 -0.0001: must not be negative"),
    (["--train_batch_size", "0"], "error: --train_batch_size 0: must be greater than 0"),
    (["--resolution", "0"], "error: --resolution 0: sizes must be greater than 0"),
    (["--resolution", "512,-8"], "error: --resolution 512,-8: sizes must be greater than 0"),
    (["--caption_dropout_rate", "1.5"], "error: --caption_dropout_rate 1.5: must be between 0 and 1"),
    (["--network_dropout", "1"], "error: --network_dropout 1.0: must be in [0, 1)"),
    (["--enable_bucket", "--min_bucket_reso", "32"], "error: --min_bucket_reso 32: must be at least "
                                                     "--bucket_reso_steps 64"),
    (["--min_timestep", "500", "--max_timestep", "100"], "error: --min_timestep 500: must be below"),
    (["--network_dim", "x"], "error: --network_dim: invalid int value: 'x'"),
    (["--mixed_precision", "fp8"], "error: --mixed_precision: invalid choice: 'fp8'"),
    (["--log_with", "mlflow"], "error: --log_with: invalid choice: 'mlflow'"),
    (["--full_fp16", "--full_bf16"], "error: --full_fp16 and --full_bf16 exclude each other"),
    (["--network_train_unet_only", "--network_train_text_encoder_only"],
     "error: --network_train_unet_only and --network_train_text_encoder_only exclude each other"),
])
def test_bad_values_are_refused_while_parsing(capsys, argv, expected):
    assert one_error(capsys, argv).startswith(expected)


@pytest.mark.parametrize("argv, expected", [
    (["--netwrok_dim", "4"], "error: unknown option --netwrok_dim (did you mean --network_dim?)"),
    (["--learning_rte=1e-4"], "error: unknown option --learning_rte (did you mean --learning_rate?)"),
    (["--network"], "error: unknown option --network (did you mean"),
    (["extra"], "error: unexpected argument 'extra'"),
])
def test_unknown_option_is_one_line(capsys, argv, expected):
    assert one_error(capsys, argv).startswith(expected)


def test_unknown_option_through_the_script(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train_network.py"), "--max_train_step", "5"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "error: unknown option --max_train_step (did you mean --max_train_steps?)"


def test_docs_tables_match_declarations():
    """docs/train_network.md and docs/gen_img_diffusers.md carry the generated tables; rerun the tool on drift."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "options_doc.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, f"run `python tools/options_doc.py`: {out.stdout}{out.stderr}"


def test_dataset_defaults_come_from_the_declarations():
    from dataclasses import fields

    from library.data.captions import CaptionOptions
    from library.data.config import DEFAULTS, SCHEMA, DatasetConfig, SubsetConfig
    from library.options.train import dataset_keys

    keys = dataset_keys()
    assert set(SCHEMA) == set(keys) and SCHEMA["image_dir"][0] == ("subset",)
    for cls in (CaptionOptions, DatasetConfig, SubsetConfig):
        for f in fields(cls):
            if f.name in keys and f.name not in ("resolution", "image_dir"):  # required fields
                assert f.default == keys[f.name].default, (cls.__name__, f.name)
    assert DEFAULTS["min_bucket_reso"] == TrainConfig().min_bucket_reso == 256


def test_library_configs_agree_with_the_declarations():
    """Dataclasses the library builds from a TrainConfig take the declared defaults (None timesteps mean 0/1000)."""
    from dataclasses import fields

    from library.train.objective import ObjectiveConfig

    run = TrainConfig()
    for f in fields(ObjectiveConfig):
        expected = {"min_timestep": 0, "max_timestep": 1000}.get(f.name, getattr(run, f.name))
        assert f.default == expected, f.name


def test_dataset_toml_bad_bucket_settings(tmp_path):
    from library.data.config import datasets_from_config
    from library.errors import ToolkitError

    img = tmp_path / "img"
    img.mkdir()
    toml_file = tmp_path / "d.toml"
    toml_file.write_text(f"[[datasets]]\nresolution = 128\nenable_bucket = true\nmin_bucket_reso = 32\n"
                         f"[[datasets.subsets]]\nimage_dir = '{img}'\n", encoding="utf-8")
    with pytest.raises(ToolkitError, match=r"datasets\[0\]: min_bucket_reso 32: must be at least bucket_reso_steps"):
        datasets_from_config(toml_file, vars(TrainConfig()))
    toml_file.write_text(f"[[datasets]]\nresolution = 128\nbatch_size = 0\n[[datasets.subsets]]\nimage_dir = '{img}'\n",
                         encoding="utf-8")
    with pytest.raises(ToolkitError, match=r"datasets\[0\]: batch_size 0: must be greater than 0"):
        datasets_from_config(toml_file, vars(TrainConfig()))


def test_bucket_sizes_adjusted_like_sd_scripts(caplog):
    from library.data.buckets import BucketSelector
    from library.errors import ToolkitError

    with caplog.at_level("WARNING"):
        sel = BucketSelector((512, 512), True, 200, 1000, 64)
    assert (sel.min_size, sel.max_size) == (192, 1024)
    assert [r.getMessage() for r in caplog.records] == [
        "min_bucket_reso 200 adjusted to 192, a multiple of bucket_reso_steps 64",
        "max_bucket_reso 1000 adjusted to 1024, a multiple of bucket_reso_steps 64"]
    with pytest.raises(ToolkitError, match=r"min_bucket_reso \(32\) must be at least bucket_reso_steps \(64\)"):
        BucketSelector((512, 512), True, 32, 1024, 64)


# ---- gen_img_diffusers.py ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--ckpt", "m.safetensors", "--prompt", "x", "--W", "0"], "error: --W 0: must be at least 8"),
    (["--ckpt", "m.safetensors", "--prompt", "x", "--steps", "0"], "error: --steps 0: must be greater than 0"),
    (["--ckpt", "m.safetensors", "--prompt", "x", "--strength", "1.5"], "error: --strength 1.5: must be in (0, 1]"),
    (["--ckpt", "m.safetensors", "--prompt", "x", "--fp16", "--bf16"], "error: --fp16 and --bf16 exclude each other"),
    (["--ckpt", "m.safetensors", "--prompt", "x", "--from_file", "p.txt"],
     "error: --prompt and --from_file exclude each other"),
    (["--prompt", "x"], "error: --ckpt is required"),
    (["--ckpt", "m.safetensors", "--promt", "x"], "error: unknown option --promt (did you mean --prompt?)"),
])
def test_gen_img_bad_values_are_refused_while_parsing(capsys, argv, expected):
    import gen_img_diffusers

    assert run_main(gen_img_diffusers.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
