"""Every option of the training and generation scripts, declared once (`spec`, `train_model`, `train_run`,
`generate`), and what is built from the declarations: parsers, config files, checks, typed configs."""
