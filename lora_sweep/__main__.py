from lora_sweep.cli import main

raise SystemExit(main())
