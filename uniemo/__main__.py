from uniemo.cli import main

raise SystemExit(main())
