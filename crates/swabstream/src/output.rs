//! How views are printed: a table for people, `--json` for tools, `--csv VIEW` per view.

use anyhow::{Context, bail};
use swabstream_views::{VIEW_NAMES, ViewSet, render_csv, render_json, render_table};

/// Output choices shared by the commands that print views.
#[derive(Debug, clap::Args)]
pub struct ViewOutput {
    /// Print all views as one JSON object with an array per view.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print one view as CSV: city_daily, district_daily, site_hourly, method_daily,
    /// rejections_daily or codes_issued_daily.
    #[arg(long, value_name = "VIEW")]
    pub csv: Option<String>,
    /// Views to print as tables (default: all but site_hourly, which is long).
    #[arg(long, value_delimiter = ',', value_name = "VIEW,...")]
    pub view: Vec<String>,
}

impl ViewOutput {
    pub fn print(&self, views: &ViewSet) -> anyhow::Result<()> {
        if self.json {
            println!("{}", render_json(views));
        } else if let Some(name) = &self.csv {
            let csv = render_csv(views, name).with_context(|| unknown(name))?;
            print!("{csv}");
        } else {
            let names: Vec<&str> = if self.view.is_empty() {
                VIEW_NAMES.iter().copied().filter(|n| *n != "site_hourly").collect()
            } else {
                for n in &self.view {
                    if !VIEW_NAMES.contains(&n.as_str()) {
                        bail!(unknown(n));
                    }
                }
                self.view.iter().map(String::as_str).collect()
            };
            print!("{}", render_table(views, &names));
        }
        Ok(())
    }
}

fn unknown(name: &str) -> String {
    format!("no view named `{name}`; the views are {}", VIEW_NAMES.join(", "))
}
