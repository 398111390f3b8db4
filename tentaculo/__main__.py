from tentaculo.cli import main

raise SystemExit(main())
