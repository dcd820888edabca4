//! Synthetic calendar values (DA and TM) derived from the seed, without a clock.

pub(crate) fn is_leap_year(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(crate) fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Formats the date `days` days after `year`-`month`-`day`, as a DA value (YYYYMMDD).
pub(crate) fn date_after(year: u32, month: u32, day: u32, days: u64) -> String {
    let (mut year, mut month, mut day) = (year, month, day);
    for _ in 0..days {
        day += 1;
        if day > days_in_month(year, month) {
            day = 1;
            month += 1;
            if month > 12 {
                month = 1;
                year += 1;
            }
        }
    }
    format!("{year:04}{month:02}{day:02}")
}

/// Formats a TM value (HHMMSS) for `seconds` after midnight.
pub(crate) fn time_of_day(seconds: u64) -> String {
    let seconds = seconds % 86_400;
    format!(
        "{:02}{:02}{:02}",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_after_crosses_leap_day() {
        assert_eq!(date_after(2020, 2, 28, 1), "20200229");
        assert_eq!(date_after(2020, 2, 28, 2), "20200301");
        assert_eq!(date_after(2021, 12, 31, 1), "20220101");
    }

    #[test]
    fn time_of_day_formats() {
        assert_eq!(time_of_day(8 * 3600 + 5 * 60 + 7), "080507");
    }
}
