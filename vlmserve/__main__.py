from vlmserve.cli import main

raise SystemExit(main())
