from clearbench.cli import main

raise SystemExit(main())
