"""napari plugin of napari-pkl-dg: dock widget, thread worker, persisted settings, sample data.

Modules (careamics-napari style, each small and separately testable):

- :mod:`pkl_dg.napari.widget` -- the "PKL Deconvolution" dock widget (Qt, magicgui);
- :mod:`pkl_dg.napari.controls` -- its controls, generated from the settings schema;
- :mod:`pkl_dg.napari.output` -- the output layers a run streams into;
- :mod:`pkl_dg.napari.worker` -- the generator run in a napari ``thread_worker`` and the
  forward-model / network caches it uses (no Qt);
- :mod:`pkl_dg.napari.psf_sources` -- PSF from settings, a PSF layer or a bead image (no Qt);
- :mod:`pkl_dg.napari.state` -- settings persisted as JSON in the user config dir (no Qt);
- :mod:`pkl_dg.napari.sample_data` -- procedurally generated sample data (no Qt);
- the ``pkl-dg demo`` subcommand lives in :mod:`pkl_dg.cli.demo`.

Nothing here is imported by ``import pkl_dg``; napari and Qt are imported only by the
widget and the demo command.
"""
