"""data_copy: materialise the dataset every later stage reads (built-in set, directory, s3://, URL)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def data_copy(
    source: str,
    dataset: Output[Dataset],
    limit_train: int = 0,
    limit_test: int = 0,
):
    """Write a dataset in disk_folder + disk_filelist layout and verify it against its manifest.

    Adapter for ``sslcore.data.prepare.prepare_dataset``.

    Args:
        source: a built-in set (``"fashion_mnist"``, built from the Debian package
            ``dataset-fashion-mnist``), a dataset directory visible to the pod (e.g. on the
            dataset PVC), an ``s3://bucket/prefix`` or an ``http(s)://.../data.tar.gz`` (or
            ``.zip``) archive; copied, given the disk_filelist layout if it has only class
            folders, and verified against its manifest (a no-op when already current).
        dataset: output directory: ``{train,test}/<class>/<i>.png`` (disk_folder),
            ``{train,test}_images.npy`` (paths relative to the directory) and
            ``{train,test}_labels.npy`` (int64) (disk_filelist), plus the manifest. Its metadata
            holds the manifest summary (name, splits, classes, listing digest).
        limit_train: use a class-stratified subset of this many train images; 0 = all.
        limit_test: the same for the test split; 0 = all.
    """
    import json
    import os

    from sslcore.data.prepare import prepare_dataset

    os.makedirs(dataset.path, exist_ok=True)
    manifest = prepare_dataset(source, dataset.path, limit_train=limit_train or None,
                               limit_test=limit_test or None)
    summary = {k: manifest[k] for k in ("name", "splits", "classes", "num_files", "listing_digest")
               if k in manifest}
    dataset.metadata.update(summary)
    print(json.dumps(summary, indent=2))
