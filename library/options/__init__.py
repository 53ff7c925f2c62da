"""Every option of train_network.py, sdxl_train_network.py and gen_img_diffusers.py, declared once.

An option is a dataclass field made with `spec.opt(type, default, help, ...)` or `spec.flag(help, ...)` in a group
class (`train_model.py`: model, network, dataset, caching; `train_run.py`: training, optimizer, precision and
memory, saving, sampling, logging; `generate.py`: gen_img_diffusers.py; `tools_lora.py` and `tools_models.py`: the
tools of networks/ and tools/, registered by name with their script in `tools.TOOLS`). Its keywords say which scripts take it
(`scripts=`), its status (`**refused(why)`, `**ignored(why)`, or implemented; `per_script=` overrides it for one
script), its value check (`check=positive`, ...), where it may appear in a dataset TOML (`dataset=`) and its
`ss_*` metadata key (`meta=`). The group classes combine into the typed configurations the library reads:
`train.TrainConfig` and `generate.GenerationConfig`.

Built from the declarations: the parsers (`parse.build_parser(script)`), command-line parsing with `--config_file`
and `--output_config` (`parse.parse_training_args(argv, script)`, `parse.parse_generation_args(argv)`), the
refused/ignored/value checks (`parse.check_values`), the dataset TOML schema (`library.data.config`), the `ss_*`
metadata (`train.options_metadata`), the docs' option tables (`tools/options_doc.py`), each tool's parsing
(`tools.parse_tool_args(name, argv)`) and the web UI's forms.

A second training script gets its parser with `build_parser("sdxl_train_network")`; its own options are
declared with `scripts=(SDXL_TRAIN,)` or refused for the other script through `per_script`. Nothing here imports
torch, diffusers or transformers, so `-h` answers at once.
"""
