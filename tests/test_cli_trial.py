"""Faults found by a new-user trial of the command line (tiny synthetic inputs only)."""

import numpy as np
import tifffile

from pkl_dg.cli import main


def _camera_image(path, seed=0, shape=(32, 32)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = 200 * np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) / 20)
    tifffile.imwrite(path, (100 + rng.poisson(blob + 10)).astype(np.uint16))
    return path


def test_restore_refuses_to_write_over_its_input(tmp_path, capsys):
    """``-o`` naming the input (or a path whose std file is the input) with --overwrite
    replaced the measurement by its own restoration."""
    src = _camera_image(tmp_path / "cells.tif")
    before = src.read_bytes()
    rc = main(["restore", str(src), "-o", str(src), "--overwrite", "--method", "rl",
               "--rl-iterations", "2", "--threads", "1", "--quiet"])
    assert rc == 2 and "input" in capsys.readouterr().err
    assert src.read_bytes() == before
    # the std file of -o cells.tif is cells_std.tif: the input here
    std_in = _camera_image(tmp_path / "x_std.tif")
    before = std_in.read_bytes()
    rc = main(["restore", str(std_in), "-o", str(tmp_path / "x.tif"), "--overwrite",
               "--steps", "1", "--samples", "2", "--threads", "1", "--quiet"])
    assert rc == 2 and "input" in capsys.readouterr().err
    assert std_in.read_bytes() == before and not (tmp_path / "x.tif").exists()


def test_batch_refuses_bad_worker_counts_before_any_work(tmp_path, capsys):
    """``--workers 0`` silently meant 'one per core' and ``--workers -2`` passed whenever no
    cluster was started; both are refused at once, as ``--chunk -5`` is."""
    src = tmp_path / "thin.tif"
    tifffile.imwrite(src, np.ones((1, 40), np.uint16))  # fails when planned: no cluster
    for n in ("0", "-2"):
        rc = main(["batch", str(src), "-o", str(tmp_path / "out"), "--workers", n,
                   "--threads", "1", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "--workers" in err and "thin.tif" not in err


def test_batch_names_both_paths_of_inputs_with_one_output(tmp_path, capsys):
    """Two inputs of one name in different folders: the error named 'a.tif and a.tif'."""
    for d in ("day1", "day2"):
        (tmp_path / d).mkdir()
        _camera_image(tmp_path / d / "a.tif")
    rc = main(["batch", str(tmp_path / "day1" / "a.tif"), str(tmp_path / "day2" / "a.tif"),
               "-o", str(tmp_path / "out"), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "day1" in err and "day2" in err


def test_compare_refuses_to_write_over_its_input_or_ground_truth(tmp_path, capsys):
    """``--csv GT --overwrite`` replaced the ground-truth TIFF by the metrics table."""
    src = _camera_image(tmp_path / "noisy.tif", seed=1)
    gt = _camera_image(tmp_path / "clean.tif", seed=2)
    kept = {p: p.read_bytes() for p in (src, gt)}
    for flag, target in (("--csv", gt), ("--png", src), ("--png", gt)):
        rc = main(["compare", str(src), "--gt", str(gt), flag, str(target), "--overwrite",
                   "--methods", "rl", "--rl-iterations", "2", "--threads", "1", "--quiet"])
        assert rc == 2 and "input" in capsys.readouterr().err
        assert all(p.read_bytes() == b for p, b in kept.items())
    rc = main(["compare", str(src), "--gt", str(gt), "--csv", str(tmp_path / "a.out"),
               "--png", str(tmp_path / "a.out"), "--methods", "rl", "--threads", "1"])
    assert rc == 2 and "--csv and --png" in capsys.readouterr().err


def test_batch_blocks_keep_psf_warnings_instead_of_printing_them(tmp_path):
    """An off-centre PSF file: every worker task printed Python's raw 'psf_source.py:161:
    PSFWarning: …' (twice per chunked plane) instead of the block carrying it to the client,
    which says each warning once per input."""
    import warnings

    from pkl_dg import RestoreSettings
    from pkl_dg.batch.worker import plane_statistics, restore_task

    yy, xx = np.mgrid[:15, :15]
    psf = np.exp(-((yy - 5) ** 2 + (xx - 9) ** 2) / 4.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "psf.tif", psf)
    src = _camera_image(tmp_path / "cells.tif", shape=(64, 64))
    s = RestoreSettings(method="rl", rl_iterations=2, psf_kind="file",
                        psf_path=str(tmp_path / "psf.tif")).to_dict()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        _, whole = restore_task(str(src), (), s, threads=1)
        stats = plane_statistics(str(src), (), s, threads=1)
        _, chunk = restore_task(str(src), (), s, (0, 40, 0, 40), stats, threads=1)
        from pkl_dg.batch.plan import Job, plan_job  # chunks planned on the client
        plan_job(Job(src, tmp_path / "cells.ome.tif", "ome-tiff",
                     RestoreSettings.from_dict(s)), set(), 40)
    assert [str(w.message) for w in escaped] == []
    for meta in (whole, chunk):
        assert "centre of mass" in meta["warnings"]["PSFWarning"]


def test_batch_tasks_read_their_psf_file_without_seceding(tmp_path):
    """Reading a PSF file inside a task computed its dask array through the cluster: the
    task seceded and the worker (one thread) started the next one beside it, so restores
    overlapped (more torch threads than cores) and their warning records mixed: a block lost
    its PSF warning and the terminal got Python's raw 'PSFWarning: …' lines."""
    import warnings

    from distributed import Client, LocalCluster

    from pkl_dg import RestoreSettings
    from pkl_dg.batch.worker import restore_task

    yy, xx = np.mgrid[:15, :15]
    psf = np.exp(-((yy - 5) ** 2 + (xx - 9) ** 2) / 4.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "psf.tif", psf)
    planes = [tifffile.imread(_camera_image(tmp_path / f"p{k}.tif", seed=k)) for k in range(4)]
    tifffile.imwrite(tmp_path / "stack.tif", np.stack(planes), imagej=True,
                     metadata={"axes": "ZYX"})
    s = RestoreSettings(method="rl", rl_iterations=3, psf_kind="file",
                        psf_path=str(tmp_path / "psf.tif")).to_dict()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as lc, Client(lc) as client:
        with warnings.catch_warnings(record=True) as escaped:
            warnings.simplefilter("always")
            futures = [client.submit(restore_task, str(tmp_path / "stack.tif"), (k,), s,
                                     None, None, 1, pure=False) for k in range(4)]
            metas = [f.result()[1] for f in futures]
    assert [m.get("warnings", {}).get("PSFWarning", "")[:30] for m in metas] == \
        ["The PSF's centre of mass is (-"] * 4
    assert [str(w.message) for w in escaped if "centre of mass" in str(w.message)] == []


def test_batch_of_a_folder_does_not_restore_its_psf_file(tmp_path, capsys):
    """``pkl-dg batch data/ --psf data/psf.tif``: the PSF file was restored as one more
    image (psf.ome.tif, a deconvolved bead)."""
    data = tmp_path / "data"
    data.mkdir()
    _camera_image(data / "cells.tif")
    yy, xx = np.mgrid[:9, :9]
    tifffile.imwrite(data / "psf.tif", np.exp(-((yy - 4) ** 2 + (xx - 4) ** 2) / 3.0)
                     .astype(np.float32))
    import warnings

    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rc = main(["batch", str(data), "-o", str(out), "--psf", str(data / "psf.tif"),
                   "--method", "rl", "--rl-iterations", "2", "--workers", "1",
                   "--threads", "1", "--quiet"])
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == ["cells.ome.tif"]
    assert any("psf.tif" in str(w.message) and "PSF" in str(w.message) for w in said)



def test_a_given_pixel_size_is_the_one_the_output_states(tmp_path):
    """``--pixel-size 100`` on a file stating 130 nm: the PSF was built at 100 nm and the
    metadata said 100, but the output's OME PhysicalSize (and a batch output's) said 130."""
    import re

    rng = np.random.default_rng(0)
    src = tmp_path / "cells.ome.tif"
    tifffile.imwrite(src, (100 + rng.poisson(30, (2, 32, 32))).astype(np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.13, "PhysicalSizeY": 0.13,
                               "PhysicalSizeZ": 0.3})
    common = ["--pixel-size", "100", "--z-step", "250", "--method", "rl",
              "--rl-iterations", "2", "--threads", "1", "--quiet"]
    assert main(["restore", str(src), "-o", str(tmp_path / "r.ome.tif"), *common]) == 0
    assert main(["batch", str(src), "-o", str(tmp_path / "b"), "--workers", "1",
                 *common]) == 0
    for out in (tmp_path / "r.ome.tif", tmp_path / "b" / "cells.ome.tif"):
        pixels = re.search(r"<Pixels[^>]*>", tifffile.TiffFile(out).ome_metadata).group(0)
        assert 'PhysicalSizeX="0.1"' in pixels and 'PhysicalSizeZ="0.25"' in pixels, out
