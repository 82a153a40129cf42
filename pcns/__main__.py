from pcns.cli import main

raise SystemExit(main())
