"""What adnify reads and writes: models on disk (``storage``, ``loading``), weights files
(``checkpoint``), atomic writes (``files``), the Hub (``hub``), model names (``models``), where a
command starts from (``sources``) and image data (``data``)."""
