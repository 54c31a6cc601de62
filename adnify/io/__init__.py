"""What adnify reads and writes: models on disk (``storage``, ``loading``), weights files
(``checkpoint``), atomic writes (``files``), the Hub (``hub``), model names (``models``), where a
command starts from (``sources``), image data (``data``: columns, classes, splits; read by
``data_sources``) and its batches (``images``)."""
