//! The font of figure text: DejaVu Sans, compiled into qflow.
//!
//! plotters draws PNG text itself, from a font it is given. Its system-font
//! feature (`ttf`) links fontconfig and finds whatever the host has installed, so
//! the same figure would differ between hosts and fail on a host without fonts.
//! With the `ab_glyph` feature it takes a font from memory instead: qflow
//! registers DejaVu Sans (`steps/assets/fonts/`, its licence beside it, 741 KiB)
//! as `sans-serif`, and every host draws the same pixels offline. SVG files name
//! `sans-serif` and leave the face to the viewer; plotters still measures text
//! with this font to lay out the axes.

use std::sync::Once;

use plotters::style::FontStyle;

/// The font's bytes.
pub static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family name figures use.
pub const FAMILY: &str = "sans-serif";

/// Register the font with plotters (once per process).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS).is_err() {
            panic!("the bundled DejaVu Sans does not parse as a font");
        }
    });
}
