"""Every user-facing string of the desktop viewer, in one place."""

APP_NAME = "sss-viewer"
WINDOW_TITLE = "sss-viewer"
WINDOW_TITLE_FILE = "{name} — sss-viewer"

# Menus and actions
MENU_FILE = "&File"
MENU_RECENT = "Open &Recent"
MENU_VIEW = "&View"
MENU_HELP = "&Help"
ACTION_OPEN = "&Open Volume…"
ACTION_OPEN_CHECKPOINT = "Open &Checkpoint…"
ACTION_OPEN_DICOM = "Open &DICOM Folder…"
MENU_BRAIN = "&Brain Extraction"
ACTION_SKULL = {"auto": "&Automatic (when the scan has its skull)", "force": "A&lways extract",
                "off": "&Off: use the scan as it is"}
ACTION_BRAIN_MASK = "Use a Brain &Mask File…"
ACTION_EXPORT_NIFTI = "&Export Mask and Heat Map (NIfTI)…"
ACTION_EXPORT_PNG = "Save Panels as &PNG…"
ACTION_QUIT = "&Quit"
ACTION_RESET_VIEW = "&Reset Zoom"
ACTION_MOUSE_HELP = "&Mouse and Keys"
ACTION_ABOUT = "&About sss-viewer"
RECENT_EMPTY = "(no recent files)"
RECENT_CLEAR = "Clear List"
RECENT_ITEM = "&{n}  {name}"

# File dialogs
DIALOG_OPEN_VOLUME = "Open a NIfTI volume"
DIALOG_OPEN_DICOM = "Open a folder of DICOM files"
DIALOG_BRAIN_MASK = "Open a brain mask on the scan's grid"
DIALOG_SERIES = "Choose a series"
DIALOG_SERIES_LABEL = "{folder} holds several series; which one should be read?"
DIALOG_OPEN_CHECKPOINT = "Open an sss-viewer checkpoint"
DIALOG_EXPORT_FOLDER = "Folder for the mask and heat map"
DIALOG_SAVE_PNG = "Save the four panels as PNG"
FILTER_NIFTI = "NIfTI volumes (*.nii *.nii.gz);;All files (*)"
FILTER_CHECKPOINT = "Checkpoints (*.pt);;All files (*)"
FILTER_PNG = "PNG images (*.png)"

# Panels
PANEL_ORIGINAL = "Original"
PANEL_RECON = "Single-step reconstruction, t = {t}"
PANEL_RECON_CONSENSUS = "Single-step reconstruction, t = {t} (first of {n})"
PANEL_HEAT = "Squared error (heat map)"
PANEL_HEAT_CONSENSUS = "Squared error, mean of t = {ts}"
PANEL_MASK = "Mask: error > {threshold:.2f}{pp}{consensus}"
PANEL_MASK_PP = ", post-processed"
PANEL_MASK_CONSENSUS = ", ≥ {votes} of {n} timesteps agree"
PANEL_COMPUTING = "computing slice {slice}…"
PANEL_STATE = " — {state}"
PANEL_NO_MODEL = "no checkpoint loaded"
PANEL_FAILED = "slice {slice} failed (see the message)"
COLORBAR_LABEL = "squared error"
ORIENT_TOP, ORIENT_BOTTOM, ORIENT_LEFT, ORIENT_RIGHT = "A", "P", "R", "L"
ORIENT_TOOLTIP = ("Radiological display: anterior at the top, the patient's right on the screen's left. "
                  "Images are shown in model space (square pixels in mm).")

# Empty window
EMPTY_NO_VOLUME = ("No volume is open.\n\nOpen a NIfTI file with File ▸ Open Volume (Ctrl+O), File ▸ Open Recent, "
                   "or drop a .nii / .nii.gz file onto this window.")
DEMO_MISSING = ("The bundled demo is not installed yet: {missing} missing in {folder}.\n\n"
                "Open your own NIfTI volume with File ▸ Open Volume (Ctrl+O) or drop one onto this window, "
                "and a checkpoint with File ▸ Open Checkpoint.")

# Slice browser and score plot
SLICE_LABEL = "Slice"
SLICE_OF = "of {last}"
SLICE_RANGE = "brain slices {first}–{last}"
SLICE_TOOLTIP = ("Axial slice index (0 = most inferior). Mouse wheel over an image, Up/Down arrows, "
                 "PageUp/PageDown (±10), Home/End (first/last brain slice). The shaded band marks the "
                 "brain slices.")
SCORE_AXIS_LEFT = "anomaly score"
SCORE_AXIS_BOTTOM = "slice"
SCORE_TOOLTIP = ("Per-slice anomaly score: 99th percentile of the heat map inside the brain. "
                 "Click to jump to a slice. Fills in as slices are computed.")

# Controls
GROUP_MODEL = "Model"
GROUP_DETECTION = "Detection"
GROUP_DISPLAY = "Display"
GROUP_VOLUME = "Whole volume"
GROUP_EXPORT = "Export"
MODEL_NONE = "no checkpoint loaded"
MODEL_INFO = "{name}\npreset {preset}, {size} px, step {step}\nits settings: λ {timestep}, threshold {threshold:g}"
MODEL_DRAWS = ", {draws} noise draws"
MODEL_TOOLTIP = "{path}\nsettings: {source}"
MODEL_LOADING = "loading {name}…"
DEVICE_LABEL = "Device"
DEVICE_ACTIVE = "running on {device}, {precision}"
BUTTON_OPEN_CHECKPOINT = "Open checkpoint…"
TIMESTEP_LABEL = "Timestep λ"
TIMESTEP_TOOLTIP = "Noise level of the single step; the paper's useful band 250–400 is marked."
TIMESTEP_CONSENSUS = "consensus uses λ = {ts}"
THRESHOLD_LABEL = "Threshold"
THRESHOLD_TOOLTIP = ("Heat-map value above which a pixel is anomalous; recomputed at once, no model call. Marks: the "
                     "paper's 0.3 (grey) and the checkpoint's calibrated threshold (orange)")
POSTPROCESS_LABEL = "Post-processing (3×3 dilation, largest region)"
CONSENSUS_LABEL = "Consensus of λ = {ts}"
VOTES_LABEL = "Votes needed"
VOTES_TOOLTIP = "A pixel is in the consensus mask when at least this many timesteps flag it."
SEED_LABEL = "Noise seed"
DRAWS_LABEL = "Noise draws"
PERSIST_LABEL = "3-D regions ≥"
PERSIST_OFF = "off"
PERSIST_TOOLTIP = ("Keep only mask regions that span at least this many slices in 3-D (connected through faces); "
                   "the whole volume is computed for it by itself, and until it is, masks stay per slice")
PANEL_MASK_PERSIST = ", 3-D regions ≥ {n} slices"
PANEL_MASK_PERSIST_PENDING = " (3-D regions ≥ {n} slices when the volume is done)"
DRAWS_TOOLTIP = ("Average the reconstruction over this many single steps with different noise: a quieter heat map "
                 "for K model calls per slice")
ERROR_DRAWS = "Could not change the number of noise draws.\n\n{message}"
MASK_STYLE_LABEL = "Mask"
MASK_STYLES = {"contour": "contour", "fill": "fill"}
OPACITY_LABEL = "Opacity"
WINDOW_LABEL = "Window"
LEVEL_LABEL = "Level"
WINDOW_TOOLTIP = ("Intensity window of the original (raw units). Right-drag on an image: horizontal = window, "
                  "vertical = level.")
AUTO_WINDOW_TOOLTIP = "Reset to the automatic window: robust percentiles of the brain's intensities"
BUTTON_AUTO_WINDOW = "Auto"
BUTTON_RUN_VOLUME = "Run whole volume"
BUTTON_CANCEL = "Cancel"
RUN_IDLE = "%v / %m brain slices computed"
RUN_PROGRESS = "running: %v / %m slice results"
BUTTON_EXPORT_NIFTI = "Mask + heat map (NIfTI)…"
BUTTON_EXPORT_PNG = "Panels (PNG)…"

# Status line
STATUS_SLICE = "slice {slice} / {last}"
STATUS_VOXEL = "voxel ({i}, {j}, {k}) = {value:.4g}"
STATUS_OUTSIDE = "outside the scan"
STATUS_HEAT = "heat {heat:.3f}"
STATUS_SEPARATOR = "   ·   "
STATUS_JOIN = "; "
UNNAMED_VOLUME = "volume"
STATUS_LISTING = "Listing the DICOM series in {name}…"
STATUS_OPENING = "Opening {name}…"
STATUS_OPENED = "Opened {name}: {shape} voxels, {spacing} mm, brain slices {first}–{last}"
STATUS_CHECKPOINT = "Loaded {name} (preset {preset}) on {device}"
STATUS_CHECKPOINT_DEFAULT = "Loaded {name} (preset {preset}) on {device}; it opens by default from now on"
STATUS_NO_CHECKPOINT = "No checkpoint: {reason}. Open one with File ▸ Open Checkpoint."
STATUS_RUN_DONE = "Whole volume done: {n} slices in {seconds:.1f} s"
STATUS_RUN_ALREADY = "Every brain slice is already computed for these settings"
STATUS_RUN_CANCELLED = "Whole-volume run cancelled after {done} of {total} slices"
STATUS_EXPORTED = "Wrote {mask} and {error}: {what}"
EXPORT_ALL = "all {n} brain slices computed"
EXPORT_PARTIAL = "{n} computed slices ({ranges}); the other slices are 0"
EXPORT_RUNNING = "Computing {n} missing slices before exporting…"
STATUS_PNG = "Saved {path}"
STATUS_SETTINGS_UNSAVED = "Settings not saved: {reason}"

# Export question
EXPORT_MISSING_TITLE = "Some slices are not computed yet"
EXPORT_MISSING_TEXT = ("{missing} of the {total} brain slices have no result for these settings yet.\n\n"
                       "Compute them first (whole-volume run), or export only the {computed} computed slices "
                       "(the others are written as 0)?")
EXPORT_RUN_MISSING = "Compute missing, then export"
EXPORT_EXISTING = "Export computed only"

# Errors
ERROR_TITLE = "sss-viewer"
ERROR_VOLUME = "Could not open the volume.\n\n{message}"
ERROR_CHECKPOINT = "Could not load the checkpoint.\n\n{message}"
ERROR_DEVICE = "Could not switch the device.\n\n{message}"
ERROR_SLICE = "Computing slice {slice} failed.\n\n{message}"
ERROR_RUN = "The whole-volume run failed.\n\n{message}"
ERROR_EXPORT = "Export failed.\n\n{message}"
ERROR_PNG = "cannot write {path}; check the folder's permissions and free space"
ERROR_OUT_OF_MEMORY = "out of memory on {device} ({detail}); switch the device to cpu or close other programs"
ERROR_UNEXPECTED = "{kind}: {detail}"
ERROR_RECENT_MISSING = "{path} no longer exists; it was removed from the recent files"
ERROR_DROP = "Drop a NIfTI volume (.nii, .nii.gz), a DICOM folder or a checkpoint (.pt)"
BRAIN_EXTRACTED = "Brain extracted with deepbet (outline in the original panel): {reason}"
BRAIN_FROM_MASK = "Brain from the mask file {name} (outline in the original panel)"
BRAIN_AS_IS = "Used as it is: {reason}"
ALIGNED = "; shown aligned to the MNI template (affine, brain overlap {overlap:.2f}, {seconds:.1f} s), results mapped back onto the scan's voxels"
DICOM_SERIES = "DICOM series {label}. "
WARNING_PREFIX = "⚠ "
ERROR_SLICE_RANGE = "slice {slice} is outside this volume's slices 0–{last}"
ERROR_NOTHING_TO_EXPORT = "Nothing to export: no slice has a result yet for these settings"
ERROR_NO_VOLUME = "No volume is open"
ERROR_NO_MODEL = "no checkpoint is loaded; pass --checkpoint"
SETTINGS_CORRUPT = ("Settings file {path} was unreadable ({reason}); started from defaults "
                    "(the old file is kept as {backup})")
SETTINGS_NOT_MOVED = "it was, it could not be moved"
SETTINGS_BAD_VALUES = "Settings file {path}: ignored invalid values for {keys}"

# Help
HELP_MOUSE = ("<b>Slices</b>: mouse wheel over an image, Up/Down arrows, PageUp/PageDown (±10), "
              "Home/End (brain range), the slider, or a click on the score plot.<br>"
              "<b>Zoom</b>: Ctrl + wheel (linked across panels); <b>pan</b>: left-drag; "
              "<b>reset</b>: View ▸ Reset Zoom (Ctrl+0).<br>"
              "<b>Window/level</b>: right-drag (horizontal = window, vertical = level), "
              "the Window/Level boxes, or Auto.<br>"
              "<b>Three planes</b> (View ▸ Three Planes, Ctrl+2): click or drag to move the crosshair; the wheel "
              "steps each view through its own axis; click a lesion row to jump to it.<br>"
              "<b>Open</b>: drop a .nii/.nii.gz volume or a .pt checkpoint onto the window.")
HELP_ABOUT = ("<b>sss-viewer {version}</b><br>Brain MRI anomaly detection by single-step diffusion sampling "
              "(Damudi &amp; Kini 2024): noise a slice to timestep λ with simplex noise, reconstruct it in one "
              "UNet call, and map the squared error.<br>Research software: not for clinical diagnosis.")

# Command line
CLI_DESCRIPTION = "Open a brain MRI volume and see where a diffusion model finds it not healthy."
CLI_VOLUME = "NIfTI volume (.nii, .nii.gz) or DICOM folder; default: the bundled demo"
CLI_SERIES = "DICOM folders with several series: its number, UID or a part of its description"
CLI_SKULL = "brain extraction: auto (when the scan has its skull, default), force or off"
CLI_BRAIN_MASK = "your own brain mask (NIfTI on the scan's grid) instead of extraction"
CLI_CHECKPOINT = "sss-viewer checkpoint (.pt); default: the settings' default_checkpoint, else the bundled one"
CLI_DEVICE = "where the model runs (default auto: CUDA when available)"
CLI_SLICE = "axial slice to show (default: the middle of the brain)"
CLI_TIMESTEP = "single-step timestep λ, {low}–{high} (default: the checkpoint's recommended one, else {default})"
CLI_THRESHOLD = ("heat-map threshold for the mask, {low}–{high} (default: the checkpoint's calibrated one, else "
                 "{default})")
CLI_REFERENCE = "a reference segmentation on the volume's grid, shown in yellow with its Dice, precision and recall"
CLI_LAYOUT = "panels: four axial panels; planes: axial, coronal, sagittal and the lesion list (default: as last time)"
CLI_SCREENSHOT = ("render, wait for the shown slice's result (and for the whole-volume run that 3-D regions "
                  "start by themselves), save the window to this PNG and exit")
CLI_RANGE = "must be between {low} and {high}, not {value}"
CLI_SCREENSHOT_FAILED = "sss-viewer: {message}"

# Lesion list and reference (gui/lesion_table.py)
LESIONS_COLUMNS = ("#", "mL", "Voxels", "Centre RAS (mm)", "Slices", "Peak heat", "Mean heat", "Voxel i, j, k")
LESIONS_COLUMN_TOOLTIPS = (
    "Region number: 1 = largest",
    "Volume in millilitres",
    "Number of voxels",
    "Centre of the region in scanner coordinates: R, A, S in mm; it can lie outside a curved region",
    "First–last axial slice the region spans, as the slider counts them (0 = most inferior)",
    "Highest heat (squared error) inside the region",
    "Mean heat (squared error) inside the region",
    "The centre's voxel as the input file indexes it (its own array order)",
)
LESION_VOLUME = "{ml:.3f}"
LESION_CENTRE = "{r:.1f}, {a:.1f}, {s:.1f}"
LESION_VOXEL = "{i}, {j}, {k}"
LESION_SLICES = "{first}–{last}"
LESION_SLICES_TOOLTIP = "axial slices {first}–{last}; most of its voxels on slice {peak}"
LESION_SLICES_ALIGNED_TOOLTIP = ("aligned slices {first}–{last}, as the slider counts them (the scan's own axial slices "
                                 "{scan_first}–{scan_last}, as the exported CSV and the report give them); most of its "
                                 "voxels on slice {peak}")
LESION_HEAT = "{heat:.3f}"
LESIONS_MIN_SIZE = "Minimum size (mL)"
LESIONS_MIN_SIZE_TOOLTIP = "Hide regions smaller than this; the list is filtered, nothing is recomputed"
LESIONS_TABLE_TOOLTIP = "Click a region (or select it and press Enter) to show it in the views"
LESIONS_NONE = "The list of 3-D regions appears after “Run whole volume”."
LESIONS_SUMMARY = "{n} regions, {ml:.2f} mL in all ({shown} shown)"
LESIONS_SUMMARY_ONE = "1 region, {ml:.2f} mL ({shown} shown)"
BUTTON_EXPORT_LESIONS = "Export CSV…"
LESIONS_EXPORT_TOOLTIP = "Save the shown regions as a CSV table"
DIALOG_SAVE_LESIONS = "Save the shown regions as CSV"
FILTER_CSV = "CSV tables (*.csv);;All files (*)"
LESIONS_FILE = "lesions.csv"
STATUS_LESIONS_CSV = "Wrote {n} regions to {path}"
ERROR_LESIONS_CSV = "cannot write {path}: {reason}"

# Three planes (gui/planes.py)
PLANE_NAMES = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
PLANE_TITLE = "{name}  {index} / {last}"
PLANE_LETTERS = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"),   # top, bottom, left, right
                 "sagittal": ("S", "I", "A", "P")}
PLANE_TOOLTIP = ("Model space, seen as in radiology: axial from the feet, coronal from the front, sagittal from the "
                 "patient's left. Left-click or drag on the image: move the crosshair; wheel: step through this "
                 "plane; Ctrl + wheel: zoom; drag beside the image: pan; right-drag: window/level.")
OVERLAY_LABEL = "Overlay:"
OVERLAY_MODES = {"mask": "Mask", "heat": "Heat map", "none": "None"}
PLANES_NOTE = (f"The model works on axial slices: its heat map and mask appear in these three planes after "
               f"“{BUTTON_RUN_VOLUME}”.")

# Reading room: layouts, reference overlay, report (gui/reading.py, main_window.py)
ACTION_LAYOUT_PANELS = "&Four Panels (Axial)"
ACTION_LAYOUT_PLANES = "&Three Planes and Lesion List"
ACTION_LOAD_REFERENCE = "Load &Reference Segmentation…"
ACTION_CLEAR_REFERENCE = "C&lear Reference"
ACTION_EXPORT_REPORT = "Export &Report (PDF)…"
DIALOG_OPEN_REFERENCE = "Open a reference segmentation on the volume's grid"
DIALOG_SAVE_REPORT = "Save the report"
FILTER_PDF = "PDF documents (*.pdf)"
STATUS_REFERENCE = "Reference {name} shown in yellow"
ERROR_REFERENCE = "Could not load the reference segmentation.\n\n{message}"
OVERLAP_SCORES = "Dice {dice:.3f} · precision {precision:.3f} · recall {recall:.3f}"
OVERLAP_LINE = ("<span style='color:#b08800'>■</span> Reference {name} — slice {slice}: {on_slice} — "
                "volume: {on_volume}")
OVERLAP_VOLUME_PENDING = "after “Run whole volume”"
OVERLAP_COMPUTING = "<span style='color:#b08800'>■</span> Reference {name} — slice {slice}: computing…"
OVERLAP_TOOLTIP = ("Overlap of the mask with the reference (yellow outline). Slice: the drawn masks on the model's "
                   "grid. Volume: the whole-volume mask mapped back onto the input's voxels, as sss-eval and "
                   "sss-detect count it.")
REPORT_MISSING_TITLE = "The report needs the whole volume"
REPORT_MISSING_TEXT = ("{missing} of the {total} brain slices have no result for these settings yet.\n\n"
                       "Compute them now and write the report when they are done?")
REPORT_RUNNING = "Computing {n} missing slices before writing the report…"
STATUS_REPORT = "Report written: {path} ({pages} pages)"
ERROR_REPORT = "Could not write the report.\n\n{message}"
ERROR_REPORT_INCOMPLETE = "not every brain slice is computed at these settings; run the whole volume first"
BUTTON_EXPORT_REPORT = "Report (PDF)…"
EXPORT_REPORT_TOOLTIP = ("One PDF a colleague can read without the app: the input, checkpoint and settings, the lesion "
                         "list and views of the largest regions (the whole volume is computed first)")
REPORT_FILE = "File"
REPORT_GRID = "Grid"
REPORT_GRID_TEXT = "{shape} voxels ({axcodes}), voxel size {spacing} mm"
REPORT_BRAIN = "Brain"
REPORT_WARNING = "Warning"
REPORT_CHECKPOINT = "Checkpoint"
REPORT_MODEL = "Model"
REPORT_MODEL_TEXT = "{preset} preset, {size} px, training step {step}, trained on {modality}"
REPORT_NOT_RECORDED = "not recorded"
REPORT_TIMESTEP = "Timestep"
REPORT_VOTES = " (consensus: ≥ {votes} of {n} agree)"
REPORT_THRESHOLD = "Threshold"
REPORT_THRESHOLD_TEXT = "{value:g} ({source})"
REPORT_FROM_CHECKPOINT = "the checkpoint's calibrated value"
REPORT_FROM_USER = "set in the viewer"
REPORT_DRAWS = "Noise draws"
REPORT_DRAWS_TEXT = "{draws} a slice, seed {seed}"
REPORT_POSTPROCESS = "Post-processing"
REPORT_POSTPROCESS_ON = "3 × 3 dilation, largest region of each slice kept"
REPORT_OFF = "off"
REPORT_PERSIST = "3-D persistence"
REPORT_PERSIST_TEXT = "regions spanning ≥ {n} slices"
REPORT_MIN_SIZE = "Minimum lesion size"
REPORT_MIN_SIZE_TEXT = "{ml:g} mL (the lesion table's filter)"
REPORT_DEVICE = "Device"

# Map hygiene (controls)
HYGIENE_CALIBRATION_NOTE = ("The checkpoint's calibrated threshold holds only with the checkpoint's own map options "
                            "(set when it loads); changing one moves the heat map or mask under that threshold. "
                            "Recomputed at once, no model call.")
LOWPASS_LABEL = "Low-pass σ"
LOWPASS_TOOLTIP = ("Blur the slice and its reconstruction alike (Gaussian σ in model pixels) before the squared "
                   "error: compares them at the detail a single step can restore, so sharp edges stop lighting "
                   "up. " + HYGIENE_CALIBRATION_NOTE)
MEDIAN_LABEL = "Median"
MEDIAN_OFF = "off"
MEDIAN_ITEM = "{n}×{n}"
MEDIAN_CHOICES = (0, 3, 5)          # offered in the box; a checkpoint's 7 or 9 is added when it loads
MEDIAN_TOOLTIP = ("Median filter of the heat map over n×n pixels: removes lone hot pixels, keeps regions. "
                  + HYGIENE_CALIBRATION_NOTE)
ERODE_LABEL = "Rim erosion"
ERODE_TOOLTIP = ("Zero the heat map within this many pixels of the brain mask's rim, where skull-stripping leftovers "
                 "and partial volume look anomalous. " + HYGIENE_CALIBRATION_NOTE)
MIN_AREA_LABEL = "Min region"
MIN_AREA_TOOLTIP = ("Drop mask regions (connected on each slice) smaller than this many pixels; the heat map is "
                    "unchanged. " + HYGIENE_CALIBRATION_NOTE)
NORM_LABEL = "Healthy norm"
NORM_TOOLTIP = ("Subtract the checkpoint's healthy norm from the heat map: where its reconstructions of healthy "
                "brains usually err (ventricle edges, sulci), averaged on the MNI grid, so only error beyond the "
                "usual is left. Only at the norm's own λ and noise draws. " + HYGIENE_CALIBRATION_NOTE)
NORM_NONE = "this checkpoint has no healthy norm"
PANEL_NORM = "healthy norm"
PANEL_NORM_OFF = "healthy norm off here"
HYGIENE_OFF = "off"
HYGIENE_PX = " px"
PANEL_HYGIENE = " · {options}"
PANEL_HYGIENE_PARTS = {"lowpass": "low-pass σ {v:g}", "median": "median {v}×{v}", "erode": "rim {v} px",
                       "min_area": "regions ≥ {v} px"}
REPORT_HYGIENE = "Map hygiene"
REPORT_HYGIENE_OFF = "off (the paper's maps)"
REPORT_FROM_CHECKPOINT_OTHER = "the checkpoint's calibrated value, calibrated with other map options"
