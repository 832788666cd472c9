fn main() {
    println!("postel");
}
