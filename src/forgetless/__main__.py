from forgetless.cli import main

raise SystemExit(main())
