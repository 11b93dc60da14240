"""``python -m sssi.data.synthetic``: see :mod:`sssi.data.synthetic.command`."""

from sssi.data.synthetic.command import main

raise SystemExit(main())
